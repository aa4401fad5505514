"""The child side of aiquery._http_process: aiohttp in a process of its own.

Run by path (`python .../_http_child.py FD`), not as part of the package, so the child imports
only the standard library, aiohttp and orjson: no DuckDB, no Arrow. The frame format is in
aiquery/_http_process.py; `Channel` is shared by both sides, and `fetch` (one request, its body
read within a size limit) and `Proxies` with aiquery._transport.AiohttpTransport.

Whatever a server sends, the child answers each request with one message: header values that
are not UTF-8 are decoded with replacement characters, a body is read and decompressed (gzip,
deflate) by our code within the request's byte limit, yielding to the loop as it inflates so
timers fire on time, and any exception becomes that request's error message.
"""

import asyncio
import base64
import signal
import socket
import struct
import sys
import urllib.request
import zlib
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson

_LENGTH = struct.Struct("!I")
KEPT_HEADERS = ("retry-after", "retry-after-ms", "location")
ERROR_BODY_BYTES = 1 << 20  # of a non-2xx body; the rest is dropped (a message is all we want from it)
INFLATE_STEP = 4 << 20      # bytes inflated between two turns of the loop


class Channel:
    """Frames of batched messages over a stream; flushes once per loop tick."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._outbox: list = []

    def send(self, message: list) -> None:
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        try:
            data = orjson.dumps(outbox)
        except TypeError:  # one message that cannot be encoded fails alone, never the channel
            data = orjson.dumps([_encodable(m) for m in outbox])
        if not self.writer.is_closing():
            self.writer.write(_LENGTH.pack(len(data)) + data)

    async def receive(self) -> list:
        size = _LENGTH.unpack(await self.reader.readexactly(_LENGTH.size))[0]
        return orjson.loads(await self.reader.readexactly(size))


def _encodable(message: list) -> list:
    try:
        orjson.dumps(message)
        return message
    except TypeError as exc:
        return ["E", message[1], "failed", f"the answer could not be passed on ({exc})", 0]


def header_text(value: str) -> str:
    """A header value as valid text: bytes that are not UTF-8 become U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class BodyError(Exception):
    """A body that cannot be read within its limit: kind is "too_large", "undecodable" or "corrupt"."""

    def __init__(self, kind: str, detail: str, status: int = 0):
        super().__init__(detail)
        self.kind = kind
        self.status = status  # the response's (read_answer sets it)


class _Inflater:
    def __init__(self, coding: str):
        self.coding = coding
        self._z: "zlib._Decompress | None" = None

    def _start(self, first: bytes):
        if self.coding == "deflate":  # a zlib stream as the RFC says, or raw deflate as some servers send
            zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
            return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip, or a zlib stream sent as gzip

    async def feed(self, data: bytes, parts: list, room: int) -> int:
        """Inflates `data` into `parts`; returns the room left; raises once past `room`."""
        while data:
            if self._z is None or self._z.eof and data[:2] == b"\x1f\x8b":  # the first gzip member, or the next
                self._z = self._start(data)
            elif self._z.eof:
                return room  # what follows the compressed stream is not part of the body
            try:
                piece = self._z.decompress(data, min(INFLATE_STEP, room + 1))
            except zlib.error as exc:
                raise BodyError("corrupt", f"its {self.coding} body is corrupt ({exc})") from None
            room -= len(piece)
            if room < 0:
                raise BodyError("too_large", "decompressed")
            parts.append(piece)
            data = self._z.unconsumed_tail or self._z.unused_data
            if data:
                await asyncio.sleep(0)  # a bomb inflates in steps: the loop (and its timers) keep running
        return room

    def finish(self) -> None:
        if self._z is not None and not self._z.eof:
            raise BodyError("corrupt", f"its {self.coding} body ends before the compressed stream does")


def _inflater(coding: str | None) -> _Inflater | None:
    coding = (coding or "identity").strip().lower()
    if coding == "identity":
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Inflater("gzip" if coding == "x-gzip" else coding)
    raise BodyError("undecodable", coding)


async def read_body(chunks, coding: str | None, length: int | None, limit: int, cut: bool = False) -> bytes:
    """A body from an async iterator of its raw chunks, decompressed; BodyError("too_large") once
    it is longer than `limit` bytes, raw or decompressed (with `cut`, the first `limit` bytes)."""
    inflater = _inflater(coding)
    if length is not None and length > limit and not cut:
        raise BodyError("too_large", "")
    parts: list[bytes] = []
    room = limit
    async for chunk in chunks:
        if inflater is not None:
            try:
                room = await inflater.feed(chunk, parts, room)
            except BodyError as exc:
                if cut and exc.kind == "too_large":
                    return b"".join(parts)[:limit]
                raise
            continue
        room -= len(chunk)
        parts.append(chunk)
        if room < 0:
            if cut:
                return b"".join(parts)[:limit]
            raise BodyError("too_large", "")
    if inflater is not None and not cut:
        inflater.finish()
    return b"".join(parts)


async def read_answer(status: int, chunks, coding: str | None, length: int | None, limit: int) -> bytes:
    """The body of a response with this status: a 2xx whole (or BodyError), an error's first
    ERROR_BODY_BYTES (empty if it cannot be decoded: the status says enough)."""
    if 200 <= status < 300:
        try:
            return await read_body(chunks, coding, length, limit)
        except BodyError as exc:
            exc.status = status
            raise
    try:
        return await read_body(chunks, coding, length, min(limit, ERROR_BODY_BYTES), cut=True)
    except BodyError:
        return b""


class Proxies:
    """The proxy of each request URL, from HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY (either
    case), the variables curl, httpx (so the batch API client) and the openai client read. Read once,
    when a session starts: aiohttp's trust_env would read them, and ~/.netrc, on every request. A
    proxy URL's credentials are sent as Proxy-Authorization, to the proxy only."""

    def __init__(self) -> None:
        found = urllib.request.getproxies_environment()
        self._proxies = {scheme: found.get(scheme) or found.get("all") for scheme in ("http", "https")}
        self._no_proxy = {"no": found.get("no", "")}
        self._any = any(self._proxies.values())
        self._chosen: dict[str, tuple[str, dict[str, str]] | None] = {}

    def __call__(self, url: str) -> tuple[str, dict[str, str]] | None:
        """(proxy URL, headers for the proxy) for a request to `url`; None to connect directly."""
        if not self._any:
            return None
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._chosen:
            proxy = self._proxies.get(parts.scheme)
            host = parts.netloc.rpartition("@")[2]
            bypass = proxy and urllib.request.proxy_bypass_environment(host, self._no_proxy)
            self._chosen[origin] = None if not proxy or bypass else _proxy_and_headers(proxy, parts.scheme,
                                                                                       parts.hostname)
        return self._chosen[origin]


class ProxyUnusable(Exception):
    """The environment names a proxy this client cannot speak to (SOCKS): trying again will not help."""


def _proxy_and_headers(proxy: str, scheme: str, host: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)  # "host:3128" means http, as curl reads it
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    if parts.scheme != "http":
        raise ProxyUnusable(f"the environment's proxy for {scheme} URLs ({scheme.upper()}_PROXY or ALL_PROXY) is "
                            f"{bare}, and aiquery sends through HTTP proxies only: name an http:// proxy, or add "
                            f"{host} to NO_PROXY to reach it directly")
    if parts.username is None:
        return bare, {}
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return bare, {"Proxy-Authorization": "Basic " + base64.b64encode(credentials).decode()}


async def fetch(session: aiohttp.ClientSession, url: str, headers: dict, body: bytes,
                timeout: aiohttp.ClientTimeout, limit: int, proxies: Proxies) -> tuple[int, dict, bytes]:
    """POSTs once (redirects not followed): status, the headers the engine reads, the body."""
    proxy, proxy_headers = proxies(url) or (None, None)
    if proxy_headers and not url.startswith("https:"):  # no tunnel: the proxy reads them on the request itself
        headers, proxy_headers = {**headers, **proxy_headers}, None
    async with session.post(url, data=body, headers=headers, allow_redirects=False, timeout=timeout, proxy=proxy,
                            proxy_headers=proxy_headers) as resp:
        kept = {name: header_text(resp.headers[name]) for name in KEPT_HEADERS if name in resp.headers}
        coding = resp.headers.get("content-encoding")
        length = resp.content_length
        if 200 <= resp.status < 300 and coding is None and length is not None and length <= limit:
            return resp.status, kept, await resp.read()  # the common case, as fast as aiohttp reads
        return resp.status, kept, await read_answer(resp.status, resp.content.iter_any(), coding, length, limit)


async def serve(fd: int) -> None:
    """Read requests, send them with aiohttp, write answers back."""
    channel = Channel(*await asyncio.open_unix_connection(sock=socket.socket(fileno=fd)))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                                    cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
    proxies = Proxies()
    headers: dict[int, dict] = {}
    timeouts: dict[float, aiohttp.ClientTimeout] = {}
    running: dict[int, asyncio.Task] = {}

    async def one(rid: int, url: str, hid: int, body: str, timeout: float, limit: int) -> None:
        client_timeout = timeouts.get(timeout) or timeouts.setdefault(timeout, aiohttp.ClientTimeout(total=timeout))
        try:
            status, kept, payload = await fetch(session, url, headers[hid], body.encode("latin-1"), client_timeout,
                                                limit, proxies)
            channel.send(["A", rid, status, kept, payload.decode("latin-1")])
        except asyncio.TimeoutError:
            channel.send(["E", rid, "timeout", "", 0])
        except BodyError as exc:
            channel.send(["E", rid, exc.kind, str(exc), exc.status])
        except ProxyUnusable as exc:
            channel.send(["E", rid, "unusable", str(exc), 0])
        except aiohttp.ClientError as exc:
            channel.send(["E", rid, "failed", str(exc) or type(exc).__name__, 0])
        except Exception as exc:  # anything else fails this request, never the loop
            channel.send(["E", rid, "failed", f"{type(exc).__name__}: {exc}", 0])
        finally:
            running.pop(rid, None)

    loop = asyncio.get_running_loop()
    try:
        while True:
            for message in await channel.receive():
                kind = message[0]
                if kind == "R":
                    running[message[1]] = loop.create_task(one(*message[1:]))
                elif kind == "H":
                    headers[message[1]] = message[2]
                elif kind == "C" and message[1] in running:
                    running.pop(message[1]).cancel()
                elif kind == "P":
                    channel.send(message)  # a ping: the parent checks this loop still turns
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the parent closed the socket or died
    finally:
        await session.close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C interrupts the parent's query, not its HTTP
    asyncio.run(serve(int(sys.argv[1])))
