"""HTTP transports: one POST of bytes, answered with status, headers and body.

aiohttp is the default because it is the only client measured here that keeps hundreds of
requests in flight on two cores (one httpx.AsyncClient tops out near 90 requests/s, see
encode/httpx#3215). httpx stays as the seam tests inject (`httpx.MockTransport`) and for users who
need its transports (custom TLS, SOCKS proxies). A transport knows URLs, not endpoints: the client
libraries' exceptions become SendError / SendTimeout here (a body it cannot read, BodyError), and
the engine turns those into the errors users read, in one place (aiquery/_engine.py
`transport_failure`). Redirects are never followed: a key is sent only to the URL it was configured for.
Every transport reads a body within the endpoint's max_response_bytes, raw and decompressed, and
answers within its timeout, body included (aiquery/_http_child.py's `read_body` does the reading),
and goes through the proxy the environment names (aiohttp: `Proxies` there; httpx reads it itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx

from ._config import DEFAULT_MAX_RESPONSE_BYTES
from ._http_child import KEPT_HEADERS, BodyError, Proxies, ProxyUnusable, fetch, header_text, read_answer

__all__ = ["BodyError", "Response", "SendError", "SendTimeout", "Transport", "Unavailable"]


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lower-case: retry-after, retry-after-ms, location when sent
    body: bytes


class Transport(Protocol):
    """POSTs `body` to `url` and answers within `timeout` seconds, reading at most `max_bytes` of body.
    Fails with the errors below only; they name no endpoint (the engine's `transport_failure` does)."""

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> Response: ...

    async def aclose(self) -> None: ...


class SendError(Exception):
    """No answer: refused, reset, a header line that cannot be read, the HTTP process lost. The
    text is the client library's, which may quote what the server sent."""


class SendTimeout(SendError):
    """No complete answer within the request's timeout; the text says more when there is more to say."""


class Unavailable(Exception):
    """The transport cannot serve this URL as installed (a built-in model's package is missing):
    trying again will not help. The text says what to install."""


async def _one_chunk(data: bytes):
    yield data


class AiohttpTransport:
    """The default transport; one session per engine, created on the engine's loop."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._proxies: Proxies | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._proxies = Proxies()
            # limit=0: the engine's per-endpoint limits bound concurrency, not the pool.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> Response:
        session = self._get_session()
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            status, kept, payload = await fetch(session, url, headers, body, client_timeout, max_bytes,
                                                self._proxies)
        except asyncio.TimeoutError:
            raise SendTimeout() from None
        except ProxyUnusable as exc:
            raise Unavailable(str(exc)) from None
        except aiohttp.ClientError as exc:
            raise SendError(str(exc) or type(exc).__name__) from None
        return Response(status, kept, payload)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


MAX_HEADERS = 128  # header lines in one answer: aiohttp's parser stops there, so httpx does too


async def _refuse_many_headers(response: httpx.Response) -> None:
    # h11 stops at 16 KB of headers only if they arrive in pieces: in one read it takes any number
    if len(response.headers.raw) > MAX_HEADERS:
        raise httpx.RemoteProtocolError(f"the answer has {len(response.headers.raw):,} header lines, more than "
                                        f"{MAX_HEADERS} (the most aiohttp's parser accepts)", request=response.request)


def httpx_client(**options: Any) -> httpx.AsyncClient:
    """An httpx client as aiquery uses one (HttpxTransport, the batch API client): redirects never
    followed (a key goes only to its own endpoint), at most MAX_HEADERS header lines per answer.
    Proxies from the environment, as httpx reads them; Unavailable for one it needs a package for."""
    try:
        return httpx.AsyncClient(follow_redirects=False, event_hooks={"response": [_refuse_many_headers]}, **options)
    except ImportError as exc:  # a SOCKS proxy without socksio: httpx says what to install
        raise Unavailable(str(exc)) from None


async def read_httpx_answer(resp: httpx.Response, limit: int, paced=None) -> Response:
    """A streamed httpx response read as every transport reads one (read_answer: within `limit`,
    raw and decompressed); `paced` wraps its raw chunks (the batch client's stretching deadline)."""
    length = resp.headers.get("content-length", "")
    if resp.is_stream_consumed:  # built in memory (httpx.MockTransport): read and decoded already
        chunks, coding = _one_chunk(resp.content), None
    else:  # raw, decoded by read_answer: httpx would inflate any size (and br, zstd) itself
        chunks, coding = resp.aiter_raw(), resp.headers.get("content-encoding")
    payload = await read_answer(resp.status_code, paced(chunks) if paced else chunks, coding,
                                int(length) if length.isdigit() else None, limit)
    kept = {name: header_text(resp.headers[name]) for name in KEPT_HEADERS if name in resp.headers}
    return Response(resp.status_code, kept, payload)


class HttpxTransport:
    """httpx on the engine's loop; pass `transport=httpx.MockTransport(handler)` to fake the network."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **client_options) -> None:
        self._options = dict(client_options, transport=transport)
        self._client: httpx.AsyncClient | None = None

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> Response:
        if self._client is None:
            self._client = httpx_client(**self._options)
        try:
            async with asyncio.timeout(timeout):  # httpx's timeouts are per read: a trickle never ends them
                async with self._client.stream("POST", url, content=body, headers=headers, timeout=timeout) as resp:
                    return await read_httpx_answer(resp, max_bytes)
        except (TimeoutError, httpx.TimeoutException):
            raise SendTimeout() from None
        except httpx.HTTPError as exc:
            raise SendError(str(exc) or type(exc).__name__) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
