"""The engine: sends requests concurrently, within each endpoint's limits, on a loop of its own.

DuckDB calls the ai_query UDF on its own threads; `Engine.run` hands a batch to the engine's event
loop (a daemon thread it owns: no asyncio.run, so notebooks with a running loop are fine) and
blocks until every row has an answer or an error. One engine serves the whole process by default
(`Engine.shared()`), so an endpoint's limits hold across every connection and query.

Requests are entries keyed by URL, model and body. A batch waits on entries; a prefetcher
(aiquery/_prefetch.py) can *hold* entries for rows DuckDB has not handed over yet, which keeps the
endpoint busy between batches. Identical requests share one entry while in flight, and a query
remembers its answers (bounded) so a repeat later in the same query is not sent again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from . import _wire
from ._config import Endpoint
from ._errors import AIQueryError, HTTPStatusError, RequestError
from ._limits import EndpointLimits, estimate_tokens
from ._providers import Target
from ._retry import call_with_retries, first_wait, is_retryable_status, parse_retry_after
from ._transport import AiohttpTransport, Response, Transport

_PARSERS: dict[str, Callable[[bytes, str], _wire.Answer]] = {
    "chat": _wire.parse_chat, "completions": _wire.parse_completions, "custom": _wire.parse_custom,
}
MEMO_SIZE = 50_000   # answers a query remembers for repeats of the same request
MAX_BEHIND = 100_000  # rows DuckDB may be ahead of the prefetcher before reading ahead stops
QUERY_IDLE_END = 2.0  # seconds without a UDF call after which a query counts as finished


@dataclass(frozen=True)
class Call:
    """One row's request. Embedding calls carry their text in `text`; `body` holds the rest."""

    endpoint: Endpoint
    target: Target
    body: dict[str, Any]
    text: str | None = None

    @property
    def key(self) -> str:
        raw = json.dumps([self.target.url, self.endpoint.model, self.body, self.text], sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"), default=str)
        return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


@dataclass
class EndpointStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    errors: int = 0


@dataclass
class _Entry:
    """One request: its answer, the task producing it, and who still needs it."""

    future: asyncio.Future
    task: asyncio.Task | None = None
    waiters: int = 0  # batches waiting on it now
    held: int = 0     # rows a prefetcher registered that no batch has taken yet


@dataclass
class Query:
    """One running query (identified by DuckDB's transaction id and text): its memo and prefetch holds."""

    identity: tuple
    window: threading.Semaphore
    memo: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    # Rows are matched one to one between the prefetcher and DuckDB's batches: a row the
    # prefetcher registered first is in `holds` until a batch takes it; a row a batch took first
    # is in `taken`, so the prefetcher skips it when it gets there.
    holds: collections.Counter = field(default_factory=collections.Counter)
    taken: collections.Counter = field(default_factory=collections.Counter)
    active: int = 0  # batches in the engine now (loop side)
    last_active: float = field(default_factory=time.monotonic)
    stopped: threading.Event = field(default_factory=threading.Event)
    # The prefetcher touches DuckDB only while a UDF call of this query runs, and a UDF call does
    # not return while the prefetcher is inside DuckDB: the query cannot end (and the user cannot
    # close the connection) while a cursor of it is busy.
    gate: threading.Condition = field(default_factory=threading.Condition)
    udf_calls: int = 0
    prefetch_busy: bool = False
    prefetcher: threading.Thread | None = None

    @contextlib.contextmanager
    def udf_call(self):
        with self.gate:
            self.udf_calls += 1
            self.gate.notify_all()
        try:
            yield
        finally:
            with self.gate:
                self.udf_calls -= 1
                while self.prefetch_busy:
                    self.gate.wait()

    @contextlib.contextmanager
    def duckdb_turn(self):
        """Waits until DuckDB may be used for reading ahead; yields False if the query ended."""
        with self.gate:
            while self.udf_calls == 0 and not self.stopped.is_set():
                self.gate.wait(0.1)
            if self.stopped.is_set():
                yield False
                return
            self.prefetch_busy = True
        try:
            yield True
        finally:
            with self.gate:
                self.prefetch_busy = False
                self.gate.notify_all()

    def remember(self, key: str, outcome: Any) -> None:
        self.memo[key] = outcome
        self.memo.move_to_end(key)
        if len(self.memo) > MEMO_SIZE:
            self.memo.popitem(last=False)


@dataclass
class _Runtime:
    """What every connection using one endpoint (URL + model) shares."""

    endpoint: Endpoint
    limits: EndpointLimits
    stats: EndpointStats = field(default_factory=EndpointStats)


class _LoopThread:
    """An event loop running on a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self, on_start: Callable[[asyncio.AbstractEventLoop], None]) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="aiquery-engine", daemon=True)
                self._thread.start()
                self._loop.call_soon_threadsafe(on_start, self._loop)
            return self._loop

    def stop(self, transport: Transport) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or not loop.is_running():
            return
        async def shutdown():
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await transport.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()


class Engine:
    """Everything requests need at run time: loop, transport, per-endpoint limits, running queries."""

    _shared: Engine | None = None
    _shared_lock = threading.Lock()

    def __init__(self, transport: Transport | None = None, sleep: Callable[[float], Any] | None = None):
        self._transport = transport or AiohttpTransport()
        self._sleep = sleep or asyncio.sleep
        self._loop_thread = _LoopThread()
        self._runtimes: dict[tuple, _Runtime] = {}
        self._entries: dict[str, _Entry] = {}
        self._queries: dict[tuple, Query] = {}
        self._seen: collections.deque = collections.deque(maxlen=4096)  # identities already read ahead
        # On close(), when the engine goes away, or at exit: stop reading ahead, close the HTTP
        # session, stop the thread. The finalizer holds no reference to the engine itself.
        self._finalizer = weakref.finalize(self, _shutdown, self._queries, self._loop_thread, self._transport)
        self._queries_lock = threading.Lock()

    @classmethod
    def shared(cls) -> Engine:
        """The process-wide engine that connect() and register() use unless given one."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()  # closed at exit by its finalizer
            return cls._shared

    def __repr__(self) -> str:
        return f"<aiquery.Engine endpoints={len(self._runtimes)} queries={len(self._queries)}>"

    # -- thread side -------------------------------------------------------------------------
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_thread.loop(lambda loop: loop.create_task(self._watch_queries()))

    def query(self, identity: tuple, window: int) -> tuple[Query, bool]:
        """The running query with this identity, and whether it may read ahead (only the first
        time: a query that went quiet and came back must not start again from its first row)."""
        with self._queries_lock:
            query = self._queries.get(identity)
            if query is not None:
                return query, False
            query = self._queries[identity] = Query(identity, threading.Semaphore(max(window, 1)))
            first = identity not in self._seen
            self._seen.append(identity)
            return query, first

    def run(self, calls: Sequence[Call], fail_fast: bool, query: Query | None = None) -> list:
        """Answers (or errors) for `calls`, in order. With fail_fast, stops at the first error."""
        if not calls:
            return []
        future = asyncio.run_coroutine_threadsafe(self._run(calls, fail_fast, query), self._loop())
        try:
            while True:  # short waits keep the calling thread responsive to Ctrl-C
                try:
                    return future.result(timeout=0.2)
                except concurrent.futures.TimeoutError:
                    continue
        except BaseException:
            future.cancel()
            if query is not None:
                self.end_query(query)
            raise

    def hold(self, calls: Sequence[Call], query: Query) -> bool:
        """Starts `calls` ahead of DuckDB and keeps their answers until a batch takes them.
        Blocks while the query's look-ahead window is full; False once the query has stopped."""
        for _ in calls:
            while not query.window.acquire(timeout=0.1):
                if query.stopped.is_set():
                    return False
        if query.stopped.is_set():
            return False
        self._loop().call_soon_threadsafe(self._hold, list(calls), query)
        return True

    def end_query(self, query: Query) -> None:
        """Stops the query's prefetch and drops what it held; safe to call more than once."""
        query.stopped.set()
        loop = self._loop()
        loop.call_soon_threadsafe(self._drop_query, query)

    def stats(self) -> dict[str, EndpointStats]:
        return {rt.endpoint.name: rt.stats for rt in self._runtimes.values()}

    def close(self) -> None:
        """Closes connections and stops the loop thread."""
        self._finalizer()

    # -- loop side ---------------------------------------------------------------------------
    def _runtime(self, endpoint: Endpoint, target: Target) -> _Runtime:
        identity = (target.url, endpoint.model)
        rt = self._runtimes.get(identity)
        if rt is None:
            limits = EndpointLimits.create(endpoint.max_concurrency, endpoint.requests_per_minute,
                                           endpoint.tokens_per_minute)
            rt = self._runtimes[identity] = _Runtime(endpoint, limits)
        elif rt.endpoint is not endpoint:
            rt.endpoint = endpoint
            rt.limits.configure(endpoint.max_concurrency, endpoint.requests_per_minute, endpoint.tokens_per_minute)
        return rt

    async def _run(self, calls: Sequence[Call], fail_fast: bool, query: Query | None) -> list:
        if query is not None:
            query.active += 1
        outcomes: list[Any] = [None] * len(calls)
        waiting: dict[str, list[int]] = {}
        try:
            keys = [call.key for call in calls]
            for i, key in enumerate(keys):
                if query is not None and key in query.memo:
                    outcomes[i] = query.memo[key]
                else:
                    waiting.setdefault(key, []).append(i)
            self._start([calls[rows[0]] for key, rows in waiting.items() if key not in self._entries])
            for key in waiting:
                self._entries[key].waiters += 1
            if query is not None:  # rows a prefetcher registered are now DuckDB's: free their window slots
                for key in keys:
                    if query.holds[key] > 0:
                        self._take_hold(key, query)
                    elif query.prefetcher is not None:
                        query.taken[key] += 1
                if len(query.taken) > MAX_BEHIND:  # the prefetcher cannot keep up: it only costs memory
                    query.stopped.set()
                    query.taken.clear()
            futures = {self._entries[key].future: key for key in waiting}
            if futures:
                await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION if fail_fast else asyncio.ALL_COMPLETED)
            for future, key in futures.items():
                if future.done() and not future.cancelled():
                    outcome = future.exception() or future.result()
                    if query is not None:
                        query.remember(key, outcome)
                    for i in waiting[key]:
                        outcomes[i] = outcome
            return outcomes
        finally:
            for key in waiting:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.waiters -= 1
                    self._maybe_drop(key, entry)
            if query is not None:
                query.active -= 1
                query.last_active = time.monotonic()

    def _hold(self, calls: list[Call], query: Query) -> None:
        fresh = []
        for call in calls:
            if query.stopped.is_set():
                query.window.release()
            elif query.taken[call.key] > 0:  # a batch got to this row first
                query.taken[call.key] -= 1
                if not query.taken[call.key]:
                    del query.taken[call.key]
                query.window.release()
            elif call.key in query.memo:  # a repeat of a request this query has answered
                query.window.release()
            else:
                fresh.append(call)
        self._start([c for c in fresh if c.key not in self._entries])
        for call in fresh:
            key = call.key
            self._entries[key].held += 1
            query.holds[key] += 1

    def _take_hold(self, key: str, query: Query) -> None:
        query.holds[key] -= 1
        if not query.holds[key]:
            del query.holds[key]
        entry = self._entries.get(key)
        if entry is not None:
            entry.held -= 1
            self._maybe_drop(key, entry)
        query.window.release()

    def _drop_query(self, query: Query) -> None:
        for key, count in list(query.holds.items()):
            for _ in range(count):
                self._take_hold(key, query)
        with self._queries_lock:
            if self._queries.get(query.identity) is query:
                del self._queries[query.identity]

    async def _watch_queries(self) -> None:
        """Ends queries DuckDB has stopped calling us for (finished, failed or interrupted)."""
        while True:
            await asyncio.sleep(QUERY_IDLE_END / 4)
            now = time.monotonic()
            with self._queries_lock:
                idle = [q for q in self._queries.values() if q.active == 0 and now - q.last_active > QUERY_IDLE_END]
            for query in idle:
                query.stopped.set()
                self._drop_query(query)

    def _maybe_drop(self, key: str, entry: _Entry) -> None:
        """Forgets an entry nobody needs; cancels its request if it is still running for no one."""
        if entry.waiters > 0 or entry.held > 0:
            return
        del self._entries[key]
        task = entry.task
        if task is not None and not task.done() and not any(e.task is task for e in self._entries.values()):
            task.cancel()

    def _start(self, calls: list[Call]) -> None:
        """Creates entries for `calls` and the tasks that answer them (embedding texts batched)."""
        loop = asyncio.get_running_loop()
        texts: dict[tuple, tuple[Endpoint, dict, dict[str, str]]] = {}
        for call in calls:
            key = call.key
            if key in self._entries:
                continue
            self._entries[key] = _Entry(loop.create_future())
            if call.text is None:
                self._entries[key].task = loop.create_task(self._job({key: None}, call))
            else:
                group = (call.target.url, call.endpoint.model, json.dumps(call.body, sort_keys=True, default=str))
                texts.setdefault(group, (call, {}))[1][key] = call.text
        for call, by_key in texts.values():
            items = list(by_key.items())
            for start in range(0, len(items), call.endpoint.batch_size):
                chunk = dict(items[start:start + call.endpoint.batch_size])
                task = loop.create_task(self._job(chunk, call))
                for key in chunk:
                    self._entries[key].task = task

    async def _job(self, keys: dict[str, str | None], call: Call) -> None:
        """Sends one request answering every key in `keys` (several embedding texts share `call`'s body)."""
        endpoint = call.endpoint
        try:
            if endpoint.task == "embeddings":
                texts = list(keys.values())
                vectors, usage = await self._send(call, _wire.embeddings_body(texts, call.body),
                                                  lambda p, n: _wire.parse_embeddings(p, n, len(texts)))
                answers: list[Any] = [_wire.Answer(v, usage if len(texts) == 1 else {}) for v in vectors]
            else:
                answers = [await self._send(call, call.body, _PARSERS[endpoint.task])]
        except AIQueryError as exc:
            answers = [exc] * len(keys)
        for key, answer in zip(keys, answers):
            entry = self._entries.get(key)
            if entry is None or entry.future.done():
                continue
            if isinstance(answer, BaseException):
                entry.future.set_exception(answer)
            else:
                entry.future.set_result(answer)
            self._maybe_drop(key, entry)

    async def _send(self, call: Call, body: dict, parse: Callable[[bytes, str], Any]) -> Any:
        endpoint, target = call.endpoint, call.target
        rt = self._runtime(endpoint, target)
        if target.sends_model and endpoint.model:
            body = {"model": endpoint.model, **body}
        payload = json.dumps(body, ensure_ascii=False).encode()
        headers = target.headers(dict(endpoint.headers))
        tokens = estimate_tokens(body) if rt.limits.tokens_per_minute else 0

        async def attempt():
            rt.stats.requests += 1
            if rt.limits.requests_per_minute or rt.limits.tokens_per_minute:
                await rt.limits.admit(tokens)
            concurrency = rt.limits.concurrency
            ticket = await concurrency.acquire()
            status = None
            try:
                response = await self._transport.post(target.url, headers, payload, endpoint.timeout, endpoint.name)
                status = response.status
            finally:
                concurrency.release(ticket, throttled=status == 429, failed=status is None or status >= 300)
            if status == 429:
                rt.stats.throttled += 1
            if not 200 <= status < 300:
                raise _status_error(endpoint, target, response)
            return parse(response.body, endpoint.name)

        try:
            return await attempt()  # the fast path: no retry machinery until something fails
        except RequestError as exc:
            if not exc.retryable or endpoint.max_attempts <= 1:
                rt.stats.errors += 1
                raise
            first_failure = exc

        def count_retry(_exc: BaseException) -> None:
            rt.stats.retries += 1

        count_retry(first_failure)
        await self._sleep(first_wait(first_failure))
        try:
            return await call_with_retries(attempt, max_attempts=endpoint.max_attempts - 1,
                                           max_time=endpoint.max_retry_time, on_retry=count_retry,
                                           sleep=self._sleep, attempts_done=1)
        except RequestError:
            rt.stats.errors += 1
            raise


def _shutdown(queries: dict[tuple, Query], loop_thread: _LoopThread, transport: Transport) -> None:
    for query in list(queries.values()):
        query.stopped.set()
    for query in list(queries.values()):
        if query.prefetcher is not None:
            query.prefetcher.join(timeout=1)  # it lets go of its cursor before DuckDB shuts down
    loop_thread.stop(transport)


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
