"""A transport that runs aiohttp in a child process (the child's code: aiquery/_http_child.py).

With 2 cores and one GIL, the engine's loop thread (which drives aiohttp) competes with DuckDB's
UDF thread and the prefetcher for the GIL; measured, that alone held SQL at about 0.7 of a bare
aiohttp loop. Here the parent only moves bytes over a socket pair, and a child process of our
own does the HTTP, on the other core.

Messages are orjson arrays, many per frame (one frame per loop tick each way), a frame being a
4-byte length and the array of messages:
  parent -> child  ["H", hid, headers]       headers used by later requests (sent once; they hold the key)
                   ["R", rid, url, hid, body, timeout, max_bytes]
                   ["C", rid]                cancel
                   ["P", id]                 ping: the child sends it back
  child -> parent  ["A", rid, status, {retry-after, retry-after-ms, location}, body]
                   ["E", rid, kind, detail, status]   kind: "timeout", "failed", "unusable" (a proxy it
                                             cannot use), "too_large", "undecodable" or "corrupt"
                   ["P", id]
Bodies travel as latin-1 strings (a lossless byte-for-byte mapping). The child exits when the
parent closes the socket or dies (end of file), so it never outlives its engine.

The parent never waits on the child without a deadline: a request not answered within its
timeout plus `grace` pings the child. If the ping comes back, that request alone fails; if not
(the child is stuck), or the child dies or sends a frame that cannot be read, the child is killed,
every request waiting on it fails with a SendError saying so (retried), and the next
request starts a new child.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import subprocess
import sys
import time
from pathlib import Path

from ._config import DEFAULT_MAX_RESPONSE_BYTES
from ._http_child import BodyError, Channel
from ._transport import Response, SendError, SendTimeout, Unavailable

_CHILD = Path(__file__).with_name("_http_child.py")
GRACE = 5.0  # seconds past a request's timeout before the child is asked whether it still runs
_OVERDUE = ["T"]  # what a request's future gets when its deadline passed (from the sweeper)


class _Child:
    """One child process, its channel and the task reading its frames."""

    def __init__(self, process: subprocess.Popen, channel: Channel):
        self.process, self.channel = process, channel
        self.reading: asyncio.Task | None = None
        self.ping: asyncio.Task | None = None  # a health check under way
        self.lost = False


class ProcessTransport:
    """The default transport: aiohttp in a child process, reached through a socket pair."""

    def __init__(self, grace: float = GRACE, child: Path = _CHILD) -> None:
        self._grace = grace
        self._script = child
        self._child: _Child | None = None
        # rid -> (future, deadline): one sweeper task checks the deadlines, not a timer per request
        self._pending: dict[int, tuple[asyncio.Future, float]] = {}
        self._sweeper: asyncio.Task | None = None
        self._ids = itertools.count()
        # id(headers) -> (hid, headers): holding the dict keeps its id from being reused, so hids stay unique
        self._header_ids: dict[int, tuple[int, dict]] = {}
        self._starting: asyncio.Lock | None = None

    @property
    def _process(self) -> subprocess.Popen | None:
        return self._child.process if self._child is not None else None

    async def _start(self) -> _Child:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._child is None:
                parent, child = socket.socketpair()
                process = subprocess.Popen([sys.executable, str(self._script), str(child.fileno())],
                                           pass_fds=[child.fileno()], stdin=subprocess.DEVNULL)
                child.close()
                started = _Child(process, Channel(*await asyncio.open_unix_connection(sock=parent)))
                started.reading = asyncio.get_running_loop().create_task(self._read(started))
                self._child = started
        return self._child

    async def _read(self, child: _Child) -> None:
        try:
            while True:
                for message in await child.channel.receive():
                    waiting = self._pending.pop(message[1], None)
                    if waiting is not None and not waiting[0].done():
                        waiting[0].set_result(message)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._lose(child, f"the HTTP process stopped ({exc.__class__.__name__})")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a frame that is not what the child sends: it cannot be trusted any more
            self._lose(child, f"the HTTP process sent a frame that cannot be read ({exc.__class__.__name__}); "
                              "it was replaced")

    def _lose(self, child: _Child, reason: str) -> None:
        """Kills `child`, fails every request waiting on it; the next request starts a new child."""
        if child.lost:
            return
        child.lost = True
        if self._child is child:
            self._child = None
        child.channel.writer.close()
        if child.process.poll() is None:
            child.process.kill()
        if child.reading is not None and child.reading is not asyncio.current_task():
            child.reading.cancel()
        self._header_ids.clear()
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_result(["E", None, "failed", reason, 0])

    def _wait(self, rid: int, seconds: float) -> asyncio.Future:
        """A future for message `rid`, given _OVERDUE by the sweeper if nothing came within `seconds`."""
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, time.monotonic() + seconds)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return future

    async def _sweep(self) -> None:
        while self._pending:
            await asyncio.sleep(min(1.0, self._grace / 2))
            now = time.monotonic()
            for rid, (future, deadline) in list(self._pending.items()):
                if deadline < now:
                    del self._pending[rid]
                    if not future.done():
                        future.set_result(_OVERDUE)

    async def _answers_ping(self, child: _Child) -> bool:
        rid = next(self._ids)
        future = self._wait(rid, self._grace)
        child.channel.send(["P", rid])
        return (await future)[0] == "P"

    async def _stuck(self, child: _Child, timeout: float) -> SendError:
        """The error for a request the child did not answer in time; replaces the child if it is stuck."""
        if child.ping is None or child.ping.done():
            child.ping = asyncio.get_running_loop().create_task(self._answers_ping(child))
        if await asyncio.shield(child.ping):
            return SendTimeout(f"no answer from the HTTP process within {timeout:g} s plus {self._grace:g} s, "
                               "though it runs; the request was dropped")
        reason = f"the HTTP process stopped answering (nothing for {timeout + 2 * self._grace:g} s); it was replaced"
        self._lose(child, reason)
        return SendError(reason)

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> Response:
        child = self._child or await self._start()
        if child.lost:  # it died while this request waited for it to start
            raise SendError("the HTTP process stopped before the request was sent")
        channel = child.channel
        known = self._header_ids.get(id(headers))
        if known is None:
            known = self._header_ids[id(headers)] = (len(self._header_ids), headers)
            channel.send(["H", known[0], headers])
        rid = next(self._ids)
        future = self._wait(rid, timeout + self._grace)
        channel.send(["R", rid, url, known[0], body.decode("latin-1"), timeout, max_bytes])
        try:
            message = await future
        except asyncio.CancelledError:
            self._pending.pop(rid, None)
            channel.send(["C", rid])
            raise
        if message is _OVERDUE:
            channel.send(["C", rid])
            raise await self._stuck(child, timeout)
        try:
            if message[0] == "A":
                return Response(message[2], message[3], message[4].encode("latin-1"))
            kind, detail, status = message[2], message[3], message[4]
        except (IndexError, TypeError, UnicodeEncodeError, AttributeError) as exc:
            self._lose(child, "the HTTP process sent an answer that cannot be read; it was replaced")
            raise SendError(f"the HTTP process sent an answer that cannot be read ({exc.__class__.__name__}); "
                            "it was replaced") from None
        if kind == "timeout":
            raise SendTimeout()
        if kind == "failed":
            raise SendError(detail)
        if kind == "unusable":
            raise Unavailable(detail)
        raise BodyError(kind, detail, status)

    async def aclose(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        child.lost = True
        child.channel.writer.close()
        if child.reading is not None:
            child.reading.cancel()
        for future, _ in self._pending.values():
            if not future.done():
                future.set_result(["E", None, "failed", "the engine was closed", 0])
        self._pending.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        # The child exits on end of file; polled, as executors may be gone at exit.
        deadline = time.monotonic() + 5
        while child.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if child.process.poll() is None:
            child.process.kill()
