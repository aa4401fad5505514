"""A transport that runs aiohttp in a child process (the child's code: aiquery/_http_child.py).

With 2 cores and one GIL, the engine's loop thread (which drives aiohttp) competes with DuckDB's
UDF thread and the prefetcher for the GIL; measured, that alone held SQL at about 0.7 of a bare
aiohttp loop. Here the parent only moves bytes over a socket pair, and a child process of our
own does the HTTP, on the other core.

Messages are orjson arrays, many per frame (one frame per loop tick each way), a frame being a
4-byte length and the array of messages:
  parent -> child  ["H", hid, headers]       headers used by later requests (sent once; they hold the key)
                   ["R", rid, url, hid, body, timeout]
                   ["C", rid]                cancel
  child -> parent  ["A", rid, status, {retry-after, retry-after-ms, location}, body]
                   ["E", rid, "timeout" | "failed", detail]
Bodies travel as latin-1 strings (a lossless byte-for-byte mapping). The child exits when the
parent closes the socket or dies (end of file), so it never outlives its engine.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
import time
from pathlib import Path

from ._http_child import Channel
from ._transport import Response, timed_out, unreachable

_CHILD = Path(__file__).with_name("_http_child.py")


class ProcessTransport:
    """The default transport: aiohttp in a child process, reached through a socket pair."""

    def __init__(self) -> None:
        self._channel: Channel | None = None
        self._process: subprocess.Popen | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count()
        # id(headers) -> (hid, headers): holding the dict keeps its id from being reused, so hids stay unique
        self._header_ids: dict[int, tuple[int, dict]] = {}
        self._reading: asyncio.Task | None = None
        self._starting: asyncio.Lock | None = None

    async def _start(self) -> Channel:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._channel is None:
                parent, child = socket.socketpair()
                self._process = subprocess.Popen([sys.executable, str(_CHILD), str(child.fileno())],
                                                 pass_fds=[child.fileno()], stdin=subprocess.DEVNULL)
                child.close()
                self._channel = Channel(*await asyncio.open_unix_connection(sock=parent))
                self._reading = asyncio.get_running_loop().create_task(self._read())
        return self._channel

    async def _read(self) -> None:
        try:
            while True:
                for message in await self._channel.receive():
                    future = self._pending.pop(message[1], None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            # The child is gone: fail what was waiting; the next request starts a new child.
            channel, self._channel = self._channel, None
            channel.writer.close()
            self._header_ids.clear()
            for future in self._pending.values():
                if not future.done():
                    future.set_result(["E", None, "failed", f"the HTTP process stopped ({exc.__class__.__name__})"])
            self._pending.clear()

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   endpoint: str) -> Response:
        channel = self._channel or await self._start()
        known = self._header_ids.get(id(headers))
        if known is None:
            known = self._header_ids[id(headers)] = (len(self._header_ids), headers)
            channel.send(["H", known[0], headers])
        rid = next(self._ids)
        future = self._pending[rid] = asyncio.get_running_loop().create_future()
        channel.send(["R", rid, url, known[0], body.decode("latin-1"), timeout])
        try:
            message = await future
        except asyncio.CancelledError:
            self._pending.pop(rid, None)
            channel.send(["C", rid])
            raise
        if message[0] == "A":
            return Response(message[2], message[3], message[4].encode("latin-1"))
        if message[2] == "timeout":
            raise timed_out(endpoint, url, timeout)
        raise unreachable(endpoint, url, message[3])

    async def aclose(self) -> None:
        if self._channel is not None:
            self._channel.writer.close()
            self._channel = None
        if self._reading is not None:
            self._reading.cancel()
        if self._process is not None:  # it exits on end of file; polled, as executors may be gone at exit
            deadline = time.monotonic() + 5
            while self._process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self._process.poll() is None:
                self._process.kill()
            self._process = None
