"""Hostile and broken HTTP servers on 127.0.0.1, written byte by byte.

aiohttp.web cannot send most of what a broken server or proxy sends (a raw 0xFF in a header, a
gzip bomb, a body that never ends, a Content-Length that lies), so this server parses requests
itself and lets a test write whatever bytes it likes back, on a loop of its own in a daemon thread:

    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        if "bad" in request.prompt:
            writer.write(b"HTTP/1.1 307 Temporary Redirect\\r\\nLocation: /\\xff\\r\\nContent-Length: 0\\r\\n\\r\\n")
        else:
            writer.write(chat("echo: " + request.prompt))

    with HostileServer(respond) as server:
        ...  # base_url = server.openai_base; server.requests lists what arrived

The connection is kept alive for the next request unless `respond` closes the writer. A handler
may sleep forever (a server that never answers): stop() cancels it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import orjson

OK_REASON = {200: "OK", 307: "Temporary Redirect", 400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests",
             500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    target: str   # the request target as sent: path and query
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def prompt(self) -> str:
        """The last chat message, the completion prompt, or the embedding inputs joined by spaces."""
        data = self.json if isinstance(self.json, dict) else {}
        if data.get("messages"):
            return str(data["messages"][-1].get("content"))
        if "prompt" in data:
            return str(data["prompt"])
        inputs = data.get("input")
        return " ".join(inputs) if isinstance(inputs, list) else str(inputs or "")


def http(status: int, body: bytes = b"", headers: Iterable[tuple[str, str | bytes]] = (),
         reason: str | bytes | None = None, length: int | None = None) -> bytes:
    """One HTTP/1.1 response, with Content-Length (`length` to lie about it). Header values and the
    reason may be bytes, to send what no encoder would."""
    def raw(value):
        return value if isinstance(value, bytes) else value.encode("latin-1")

    lines = [b"HTTP/1.1 %d %s" % (status, raw(OK_REASON.get(status, "Whatever") if reason is None else reason))]
    lines += [raw(name) + b": " + raw(value) for name, value in headers]
    lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def json_response(status: int, data, headers: Iterable[tuple[str, str | bytes]] = (), **kw) -> bytes:
    return http(status, orjson.dumps(data), [("Content-Type", "application/json"), *headers], **kw)


def chat_body(text: str) -> bytes:
    return orjson.dumps({"object": "chat.completion", "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def chat(text: str, headers: Iterable[tuple[str, str | bytes]] = ()) -> bytes:
    """A well-formed 200 chat answer whose content is `text`."""
    return http(200, chat_body(text), [("Content-Type", "application/json"), *headers])


def embeddings(vectors: list[list[float]]) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return http(200, orjson.dumps({"object": "list", "data": data, "model": "m"}),
                [("Content-Type", "application/json")])


def deep_json(levels: int) -> bytes:
    """Arrays nested `levels` deep: a few KB that a recursive parser cannot read."""
    return b"[" * levels + b"]" * levels


@functools.lru_cache(maxsize=None)
def compressed(prefix: bytes, repeat: bytes, times: int, suffix: bytes = b"", wbits: int = 31) -> bytes:
    """prefix + repeat * times + suffix, compressed (wbits 31: gzip, 15: zlib, -15: raw deflate)
    without ever holding the inflated bytes: a bomb of hundreds of MiB is a few hundred KB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    parts = [compressor.compress(prefix)]
    parts += [compressor.compress(repeat) for _ in range(times)]
    parts += [compressor.compress(suffix), compressor.flush()]
    return b"".join(parts)


def gzip_bomb(inflated: int, wbits: int = 31) -> bytes:
    """A compressed stream of `inflated` spaces (about 1/1000 of that on the wire)."""
    return compressed(b"", b" " * (1 << 20), inflated >> 20, wbits=wbits)


async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
    """What a well-behaved server says: 'echo: PROMPT' (embeddings: one small vector per input)."""
    data = request.json if isinstance(request.json, dict) else {}
    if request.target.partition("?")[0].endswith("/embeddings"):
        inputs = data.get("input") or []
        writer.write(embeddings([[1.0, float(len(text))] for text in inputs]))
    else:
        writer.write(chat("echo: " + request.prompt))


Respond = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def bad_rows(fault: bytes | Respond) -> HostileServer:
    """A server answering prompts that start with 'bad' with `fault` (bytes, or a coroutine function
    writing them), and everything else normally."""
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        if not request.prompt.startswith("bad"):
            await answer(request, writer)
        elif callable(fault):
            await fault(request, writer)
        else:
            writer.write(fault)
    return HostileServer(respond)


class HostileServer:
    def __init__(self, respond: Respond = answer):
        self.respond = respond
        self.url = ""
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="HostileServer", daemon=True)

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, limit=1 << 20)
        self.url = "http://127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            while not writer.is_closing():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = {}
                for line in filter(None, header_lines):
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                request = Request(method, target, headers, body)
                with self._lock:
                    self._requests.append(request)
                await self.respond(request, writer)
                if not writer.is_closing():
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()
