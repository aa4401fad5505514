"""The transport for built-in models: `local://MODEL/PATH` URLs answered in this process.

It has the HTTP transports' shape (a POST of bytes answered by status, headers and body), so the
engine treats a local model like any endpoint: same queue, limits, retries, usage and parsing.
Each model runs on one worker thread of its own (llama.cpp and the ONNX session do their own
multi-threading inside one call, and release the GIL while they compute), so the event loop never
waits on a model. A request the model rejects is answered 400 with the model's reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from urllib.parse import urlsplit

import orjson

from ._models import MODELS, BadRequest
from ._transport import Response

SCHEME = "local"
_TASKS = {"/chat/completions": "chat", "/completions": "completions", "/embeddings": "embeddings"}
_JSON = {"content-type": "application/json"}


def url(model: str, path: str) -> str:
    return f"{SCHEME}://{model}{path}"


class LocalTransport:
    def __init__(self) -> None:
        self._models: dict[str, object] = {}
        self._threads: dict[str, concurrent.futures.ThreadPoolExecutor] = {}

    def _serve(self, name: str, task: str, body: bytes) -> Response:
        model = self._models.get(name)
        if model is None:  # loaded on its own thread, on first use (Unavailable when its package is missing)
            model = self._models[name] = MODELS[name]()
        try:
            answer = model(task, orjson.loads(body))
        except BadRequest as exc:
            return Response(400, _JSON, orjson.dumps({"error": {"message": str(exc)}}))
        return Response(200, _JSON, orjson.dumps({**answer, "model": name}))  # not the file's path

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float,
                   max_bytes: int = 0) -> Response:  # answers are built here: no limit needed
        parts = urlsplit(url)
        name, task = parts.hostname or "", _TASKS.get(parts.path)
        if name not in MODELS or task is None:
            return Response(404, _JSON, orjson.dumps({"error": {"message": f"no built-in model at {url}"}}))
        thread = self._threads.get(name)
        if thread is None:
            thread = self._threads[name] = concurrent.futures.ThreadPoolExecutor(1, f"aiquery-{name}")
        return await asyncio.get_running_loop().run_in_executor(thread, self._serve, name, task, body)

    async def aclose(self) -> None:
        for thread in self._threads.values():
            thread.shutdown(wait=False, cancel_futures=True)
