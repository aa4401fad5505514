"""The child side of aiquery._http_process: aiohttp in a process of its own.

Run by path (`python .../_http_child.py FD`), not as part of the package, so the child imports
only the standard library, aiohttp and orjson: no DuckDB, no Arrow. The frame format is in
aiquery/_http_process.py; `Channel` is shared by both sides.
"""

import asyncio
import signal
import socket
import struct
import sys

import aiohttp
import orjson

_LENGTH = struct.Struct("!I")
_KEPT_HEADERS = ("retry-after", "retry-after-ms", "location")


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
        data = orjson.dumps(self._outbox)
        self._outbox = []
        if not self.writer.is_closing():
            self.writer.write(_LENGTH.pack(len(data)) + data)

    async def receive(self) -> list:
        size = _LENGTH.unpack(await self.reader.readexactly(_LENGTH.size))[0]
        return orjson.loads(await self.reader.readexactly(size))


async def serve(fd: int) -> None:
    """Read requests, send them with aiohttp (redirects not followed), write answers back."""
    channel = Channel(*await asyncio.open_unix_connection(sock=socket.socket(fileno=fd)))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                                    cookie_jar=aiohttp.DummyCookieJar())
    headers: dict[int, dict] = {}
    timeouts: dict[float, aiohttp.ClientTimeout] = {}
    running: dict[int, asyncio.Task] = {}

    async def one(rid: int, url: str, hid: int, body: str, timeout: float) -> None:
        client_timeout = timeouts.get(timeout) or timeouts.setdefault(timeout, aiohttp.ClientTimeout(total=timeout))
        try:
            async with session.post(url, data=body.encode("latin-1"), headers=headers[hid], allow_redirects=False,
                                    timeout=client_timeout) as resp:
                payload = await resp.read()
                kept = {name: resp.headers[name] for name in _KEPT_HEADERS if name in resp.headers}
                channel.send(["A", rid, resp.status, kept, payload.decode("latin-1")])
        except asyncio.TimeoutError:
            channel.send(["E", rid, "timeout", ""])
        except aiohttp.ClientError as exc:
            channel.send(["E", rid, "failed", str(exc) or type(exc).__name__])
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
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the parent closed the socket or died
    finally:
        await session.close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C interrupts the parent's query, not its HTTP
    asyncio.run(serve(int(sys.argv[1])))
