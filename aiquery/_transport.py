"""HTTP transports: one POST of bytes, answered with status, headers and body.

aiohttp is the default because it is the only client measured here that keeps hundreds of
requests in flight on two cores (one httpx.AsyncClient tops out near 90 requests/s, see
encode/httpx#3215). httpx stays as the seam tests inject (`httpx.MockTransport`) and for users who
need its transports (proxies, custom TLS). Lower-layer exceptions become TransportError here and
nowhere else. Redirects are never followed: a key is sent only to the URL it was configured for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx

from ._errors import TransportError


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive (aiohttp's and httpx's own header mappings)
    body: bytes


class Transport(Protocol):
    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   endpoint: str) -> Response: ...

    async def aclose(self) -> None: ...


def unreachable(endpoint: str, url: str, detail: str) -> TransportError:
    return TransportError(f"endpoint {endpoint!r}: request failed to {url}: {detail}", endpoint=endpoint, retryable=True)


def timed_out(endpoint: str, url: str, timeout: float) -> TransportError:
    return TransportError(f"endpoint {endpoint!r}: no complete answer from {url} within {timeout:g} s "
                          "(raise the endpoint's timeout setting if the model is slow)",
                          endpoint=endpoint, retryable=True)


class AiohttpTransport:
    """The default transport; one session per engine, created on the engine's loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: the engine's per-endpoint limits bound concurrency, not the pool.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   endpoint: str) -> Response:
        session = self._get_session()
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                    timeout=client_timeout) as resp:
                payload = await resp.read()
                return Response(resp.status, resp.headers, payload)
        except asyncio.TimeoutError:
            raise timed_out(endpoint, url, timeout) from None
        except aiohttp.ClientError as exc:
            raise unreachable(endpoint, url, str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxTransport:
    """httpx on the engine's loop; pass `transport=httpx.MockTransport(handler)` to fake the network."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **client_options) -> None:
        self._options = dict(client_options, transport=transport)
        self._client: httpx.AsyncClient | None = None

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   endpoint: str) -> Response:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, **self._options)
        try:
            resp = await self._client.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            raise timed_out(endpoint, url, timeout) from None
        except httpx.HTTPError as exc:
            raise unreachable(endpoint, url, str(exc) or type(exc).__name__) from exc
        return Response(resp.status_code, resp.headers, resp.content)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
