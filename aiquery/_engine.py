"""The engine: sends requests concurrently, within each endpoint's limits, on a loop of its own.

DuckDB calls the ai_query UDF on its own threads; `Engine.run` hands the batch to the engine's
event loop (a daemon thread it owns: no asyncio.run, so notebooks with a running loop are fine)
and blocks until every row has an answer or an error. Identical requests in flight are sent once;
embedding inputs are packed `batch_size` to a request. Ctrl-C while waiting cancels the batch's
requests that no one else is waiting for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from . import _wire
from ._config import Endpoint
from ._errors import AIQueryError, HTTPStatusError, RequestError
from ._providers import Target, resolve
from ._retry import call_with_retries, is_retryable_status, parse_retry_after
from ._transport import AiohttpTransport, Response, Transport

_PARSERS: dict[str, Callable[[bytes, str], _wire.Answer]] = {
    "chat": _wire.parse_chat, "completions": _wire.parse_completions, "custom": _wire.parse_custom,
}


@dataclass(frozen=True)
class Call:
    """One row's request. Embedding calls carry their text in `text`; `body` holds the rest."""

    endpoint: Endpoint
    body: dict[str, Any]
    text: str | None = None


@dataclass
class EndpointStats:
    requests: int = 0
    retries: int = 0
    errors: int = 0


@dataclass
class _Job:
    """One HTTP request in flight and how many rows are waiting on it."""

    task: asyncio.Task | None = None
    waiters: int = 0


@dataclass
class _Runtime:
    endpoint: Endpoint
    limit: asyncio.Semaphore
    target: Target | None = None
    stats: EndpointStats = field(default_factory=EndpointStats)


class _LoopThread:
    """An event loop running on a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="aiquery-engine", daemon=True)
                self._thread.start()
            return self._loop

    def stop(self, transport: Transport) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or not loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(transport.aclose(), loop).result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()


class Engine:
    """Holds everything one registration needs at run time: loop, transport, limits, stats."""

    def __init__(self, endpoints: dict[str, Endpoint], transport: Transport | None = None,
                 sleep: Callable[[float], Any] | None = None):
        self.endpoints = endpoints
        self._transport = transport or AiohttpTransport()
        self._sleep = sleep or asyncio.sleep
        self._loop_thread = _LoopThread()
        # Closing the HTTP session and stopping the thread when the engine goes away (its connection
        # closed) or when close() is called; the finalizer holds no reference to the engine itself.
        self._finalizer = weakref.finalize(self, self._loop_thread.stop, self._transport)
        self._runtimes: dict[str, _Runtime] = {}
        self._futures: dict[str, asyncio.Future] = {}  # request key -> its answer, while in flight
        self._jobs: dict[str, _Job] = {}               # request key -> the job producing it

    def __repr__(self) -> str:
        return f"<aiquery.Engine endpoints={sorted(self.endpoints)}>"

    # -- thread side -------------------------------------------------------------------------
    def run(self, calls: Sequence[Call], fail_fast: bool) -> list[_wire.Answer | AIQueryError]:
        """Answers (or errors) for `calls`, in order. With fail_fast, stops at the first error."""
        if not calls:
            return []
        future = asyncio.run_coroutine_threadsafe(self._run(calls, fail_fast), self._loop_thread.loop())
        try:
            while True:  # short waits keep the calling thread responsive to Ctrl-C
                try:
                    return future.result(timeout=0.2)
                except concurrent.futures.TimeoutError:
                    continue
        except BaseException:
            future.cancel()
            raise

    def stats(self) -> dict[str, EndpointStats]:
        return {name: rt.stats for name, rt in self._runtimes.items()}

    def close(self) -> None:
        """Closes connections and stops the loop thread."""
        self._finalizer()
        self._runtimes.clear()

    # -- loop side ---------------------------------------------------------------------------
    def _runtime(self, endpoint: Endpoint) -> _Runtime:
        rt = self._runtimes.get(endpoint.name)
        if rt is None or rt.endpoint is not endpoint:
            rt = self._runtimes[endpoint.name] = _Runtime(endpoint, asyncio.Semaphore(endpoint.max_concurrency))
        return rt

    async def _run(self, calls: Sequence[Call], fail_fast: bool) -> list:
        keys = self._submit(calls)
        futures = [self._futures[k] for k in keys]
        try:
            if fail_fast:
                await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
            else:
                await asyncio.wait(futures)
            return [f.exception() or f.result() if f.done() else None for f in futures]
        finally:
            self._release(keys)

    def _submit(self, calls: Sequence[Call]) -> list[str]:
        """Registers every call's request key, starting a job for keys not already in flight."""
        keys: list[str] = []
        pending_texts: dict[tuple[str, str], tuple[Endpoint, dict, dict[str, str]]] = {}
        for call in calls:
            key = _request_key(call)
            keys.append(key)
            if key not in self._futures:
                self._futures[key] = asyncio.get_running_loop().create_future()
                self._jobs[key] = _Job()
                if call.text is None:
                    self._jobs[key].task = self._start({key: None}, call.endpoint, call.body)
                else:
                    group = (call.endpoint.name, _canonical(call.body))
                    pending_texts.setdefault(group, (call.endpoint, call.body, {}))[2][key] = call.text
            self._jobs[key].waiters += 1
        for endpoint, body, texts in pending_texts.values():
            items = list(texts.items())
            for start in range(0, len(items), endpoint.batch_size):
                chunk = dict(items[start:start + endpoint.batch_size])
                task = self._start(chunk, endpoint, body)
                for key in chunk:
                    self._jobs[key].task = task
        return keys

    def _start(self, keys: dict[str, str | None], endpoint: Endpoint, body: dict) -> asyncio.Task:
        """A task sending one request that answers every key in `keys` (several for embeddings)."""
        async def job():
            try:
                if endpoint.task == "embeddings":
                    texts = list(keys.values())
                    vectors, usage = await self._send(endpoint, _wire.embeddings_body(texts, body),
                                                      lambda p, n: _wire.parse_embeddings(p, n, len(texts)))
                    answers = [_wire.Answer(v, usage if len(texts) == 1 else {}) for v in vectors]
                else:
                    answers = [await self._send(endpoint, body, _PARSERS[endpoint.task])]
                for key, answer in zip(keys, answers):
                    self._resolve(key, answer)
            except asyncio.CancelledError:
                for key in keys:
                    self._resolve(key, None, cancelled=True)
                raise
            except AIQueryError as exc:
                for key in keys:
                    self._resolve(key, exc)
        return asyncio.get_running_loop().create_task(job())

    def _resolve(self, key: str, outcome: Any, cancelled: bool = False) -> None:
        future = self._futures.pop(key, None)
        self._jobs.pop(key, None)
        if future is None or future.done():
            return
        if cancelled:
            future.cancel()
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _release(self, keys: list[str]) -> None:
        """Drops this batch's interest in its keys; cancels jobs nobody waits for any more."""
        orphaned = set()
        for key in keys:
            job = self._jobs.get(key)
            if job is not None:
                job.waiters -= 1
                if job.waiters <= 0 and job.task is not None:
                    orphaned.add(job.task)
        for task in orphaned:
            shared = [k for k, j in self._jobs.items() if j.task is task and j.waiters > 0]
            if not shared:
                task.cancel()

    async def _send(self, endpoint: Endpoint, body: dict, parse: Callable[[bytes, str], Any]) -> Any:
        rt = self._runtime(endpoint)
        if rt.target is None:
            rt.target = resolve(endpoint)
        target = rt.target
        if target.sends_model and endpoint.model:
            body = {"model": endpoint.model, **body}
        payload = json.dumps(body, ensure_ascii=False).encode()
        headers = target.headers(dict(endpoint.headers))

        async def attempt():
            rt.stats.requests += 1
            async with rt.limit:
                response = await self._transport.post(target.url, headers, payload, endpoint.timeout,
                                                      endpoint.name)
            if not 200 <= response.status < 300:
                raise _status_error(endpoint, target, response)
            return parse(response.body, endpoint.name)

        def count_retry(_exc: BaseException) -> None:
            rt.stats.retries += 1

        try:
            return await call_with_retries(attempt, max_attempts=endpoint.max_attempts,
                                           max_time=endpoint.max_retry_time, on_retry=count_retry,
                                           sleep=self._sleep)
        except RequestError:
            rt.stats.errors += 1
            raise


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _request_key(call: Call) -> str:
    return hashlib.sha256(_canonical([call.endpoint.name, call.body, call.text]).encode()).hexdigest()


def _status_error(endpoint: Endpoint, target: Target, response: Response) -> HTTPStatusError:
    status = response.status
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    message = _wire.error_text(response.body)
    text = f"endpoint {endpoint.name!r}: HTTP {status} {reason} from {target.url}: {message}"
    if status in (401, 403):
        text += (f". The key came from {target.key_source}; check that it is valid for this endpoint"
                 if target.key_source else
                 ". No key was sent: set api_key_env to the environment variable that holds the key")
    elif 300 <= status < 400:
        text += (f". Redirect to {response.headers.get('location', '?')} not followed (a key is only sent "
                 "to its own endpoint): set base_url/host to the final URL")
    elif status == 404:
        text += ". Check base_url (or host) and model in the endpoint settings"
    return HTTPStatusError(text, endpoint=endpoint.name, status=status,
                           retryable=is_retryable_status(status),
                           retry_after=parse_retry_after(response.headers))
