"""The engine: sends requests concurrently, within each endpoint's limits, on a loop of its own.

DuckDB calls the ai_query UDF on its own threads; `Engine.run` hands a batch to the engine's event
loop (a daemon thread it owns: no asyncio.run, so notebooks with a running loop are fine) and
blocks until every row has an answer or an error. One engine serves the whole process by default
(`Engine.shared()`), so an endpoint's limits hold across every connection and query.

Requests are entries keyed by URL and body. A batch waits on entries; a prefetcher
(aiquery/_readahead.py) can *hold* entries for rows DuckDB has not handed over yet, which keeps the
endpoint busy between batches. Identical requests share one entry while in flight, and a query
remembers its answers (bounded) so a repeat later in the same query is not sent again.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson

from . import _process, _wire
from ._config import PREFIX_CHARS, Endpoint
from ._batch import BatchDispatcher
from ._cache import ResponseCache
from ._errors import (AIQueryError, BudgetExceeded, ConfigError, HTTPStatusError, QueryInterrupted, RequestError,
                      RequestTimeout, ResponseError, TransportError)
from ._limits import EndpointLimits, estimate_tokens
from ._providers import Target
from ._retry import is_retryable_status, parse_retry_after, retry_wait
from ._scrub import Secrets, printable, shorten
from ._usage import QUERY_HISTORY, Price, Usage
from ._calls import Call
from ._query import Query
from ._http_process import ProcessTransport
from ._local import SCHEME as LOCAL_SCHEME, LocalTransport
from ._transport import AiohttpTransport, BodyError, Response, SendError, SendTimeout, Transport, Unavailable

_PARSERS: dict[str, Callable[[bytes, str, dict], _wire.Answer]] = {
    "chat": _wire.parse_chat, "completions": _wire.parse_completions, "custom": _wire.parse_custom,
}
AUTH_RESENDS = 2     # times one request goes again after a 401, each time with a newer token
MAX_BEHIND = 100_000  # rows DuckDB may be ahead of the prefetcher before reading ahead stops
QUERY_IDLE_END = 2.0  # seconds without a UDF call after which a query DuckDB cannot tell about counts as finished
WATCH_INTERVAL = 0.02  # seconds between looks at whether DuckDB still runs each query
_INTERRUPTED = ("query interrupted: requests in flight were cancelled; answers received are kept in the "
                "response cache, so running the statement again sends only the rest")


@dataclass
class _Work:
    """One HTTP request waiting in its endpoint's queue (or being sent): the entries it answers."""

    keys: dict[bytes, str | None]  # entry key -> embedding text (None for other tasks)
    call: Call
    query: Query | None = None  # the query that started it: its usage is counted there too
    attempts: int = 0
    first_failure: float | None = None
    worker: asyncio.Task | None = None  # the worker sending it right now
    finished: bool = False


@dataclass
class _Entry:
    """One request's answer, the work producing it, and who still needs it."""

    future: asyncio.Future
    work: _Work | None = None
    waiters: int = 0  # batches waiting on it now
    held: int = 0     # rows a prefetcher registered that no batch has taken yet


@dataclass
class _Runtime:
    """What every connection using one endpoint (URL + model) shares: its limits, and the queue
    of requests that workers (at most `limit` of them) send in the order they were started."""

    endpoint: Endpoint
    limits: EndpointLimits
    price: Price | None = None  # for cost figures and budget_usd
    dimension: int | None = None  # of the embedding vectors it answered
    stats: Usage = field(default_factory=Usage)
    queue: collections.deque = field(default_factory=collections.deque)
    workers: int = 0


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

    def stop(self, transports: tuple[Transport, ...]) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or not loop.is_running():
            return

        async def shutdown():
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            for transport in transports:
                await transport.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()


class Engine:
    """Everything requests need at run time: loop, transport, per-endpoint limits, running queries."""

    def __init__(self, transport: Transport | None = None, sleep: Callable[[float], Any] | None = None,
                 idle_end: float = QUERY_IDLE_END, jitter: Callable[[], float] = random.random,
                 mounts: Mapping[str, Transport | None] | None = None):
        """`transport` sends http:// and https:// requests; `mounts` ({"https://": transport, ...},
        as httpx's mounts=) replaces the transport of a URL scheme, None removing it (see
        default_mounts). The engine closes them. `sleep` waits before a retry and `jitter` draws
        its backoff's random fraction in [0, 1): tests pass a recording sleep and a seeded
        `random.Random(n).random`."""
        self._mounts = _mounted(transport, mounts or {})
        self._sleep = sleep or asyncio.sleep
        self._jitter = jitter
        self._idle_end = idle_end  # see QUERY_IDLE_END
        self._retrying = 0  # requests waiting to be sent again
        self._loop_thread = _LoopThread()
        self._runtimes: dict[tuple, _Runtime] = {}
        self._entries: dict[bytes, _Entry] = {}
        self._queries: dict[tuple, Query] = {}
        self._seen: collections.deque = collections.deque(maxlen=4096)  # identities already read ahead
        self._batches = BatchDispatcher(self)  # batch mode: calls sent through provider batch APIs
        # On close(), when the engine goes away, or at exit: stop reading ahead, close the HTTP
        # session, stop the thread. The finalizer holds no reference to the engine itself.
        transports = {id(t): t for t in self._mounts.values()}
        self._finalizer = weakref.finalize(self, _shutdown, self._queries, self._loop_thread,
                                           (*transports.values(), self._batches))
        self._queries_lock = threading.RLock()  # the SIGINT handler takes it on whatever thread it interrupts
        self._token_sources: dict[tuple, Any] = {}  # credentials identity -> its TokenSource (aiquery/_auth.py)
        self._token_secrets: dict[int, tuple[dict, Secrets]] = {}  # id(headers) -> (headers, their secrets)
        self._token_lock = threading.Lock()
        self._query_numbers = itertools.count(1)
        self._finished: collections.deque = collections.deque(maxlen=QUERY_HISTORY)  # for aiquery_query_usage()

    @classmethod
    def shared(cls) -> Engine:
        """The process-wide engine that connect() and register() use unless given one."""
        return _process.shared_engine(cls)

    def __repr__(self) -> str:
        return f"<aiquery.Engine endpoints={len(self._runtimes)} queries={len(self._queries)}>"

    # -- thread side -------------------------------------------------------------------------
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._loop_thread.loop(lambda loop: loop.create_task(self._watch_queries()))

    def query(self, identity: tuple, window: int,
              running: Callable[[], bool] | None = None) -> tuple[Query, bool]:
        """The running query with this identity (connection or cursor number, transaction, text),
        entered (Query.enter: the caller calls leave() when its batch returns), and whether it may read
        ahead (only the first time: a query that went quiet and came back must not start again from
        its first row). `running` tells whether DuckDB still runs it."""
        with self._queries_lock:
            query = self._queries.get(identity)
            if query is not None:
                query.enter()
                return query, False
            # A connection or cursor runs one query at a time: a new one there means the others ended.
            ended = [q for q in self._queries.values() if q.identity[0] == identity[0]]
            query = self._queries[identity] = Query(identity, window, next(self._query_numbers))
            query.running = running
            query.seen_running = running is not None and running()  # a batch of it is in DuckDB right now
            query.enter()
            first = identity not in self._seen
            self._seen.append(identity)
            # Until the caller has planned (or given up) reading ahead, batches that other DuckDB
            # threads hand over are counted as taken, or the prefetcher would send their rows again.
            query.may_read_ahead = first and window > 0
        for other in ended:
            self.end_query(other)
        return query, first

    def _secrets(self, target: Target, headers: dict[str, str]) -> Secrets:
        """What to redact from the answer to a request sent with `headers`: the target's secrets, or,
        for a token from its auth (a new headers dict for each token), those of these headers."""
        if headers is target.headers:
            return target.secrets
        known = self._token_secrets.get(id(headers))
        if known is None or known[0] is not headers:
            if len(self._token_secrets) > 64:  # tokens of the past: their dicts are gone or unused
                self._token_secrets.clear()
            known = self._token_secrets[id(headers)] = (headers, Secrets.of(None, headers, target.url))
        return known[1]

    def shared_auth(self, target: Target) -> Target:
        """`target` with this engine's token source for its credentials: every connection and query
        using the same credentials shares one token (fetched once, refreshed once)."""
        if target.auth is None:
            return target
        with self._token_lock:
            auth = self._token_sources.setdefault(target.auth.identity, target.auth)
        return target if auth is target.auth else dataclasses.replace(target, auth=auth)

    def run(self, calls: Sequence[Call], fail_fast: bool, query: Query | None = None) -> list:
        """Answers (or errors) for `calls`, in order. With fail_fast, stops at the first error."""
        if not calls:
            return []
        if query is not None and query.cancelled.is_set():
            raise QueryInterrupted(_INTERRUPTED)
        future = asyncio.run_coroutine_threadsafe(self._run(calls, fail_fast, query), self._loop())
        try:
            while True:  # short waits keep the calling thread responsive to Ctrl-C and cancellation
                try:
                    return future.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    if query is not None and query.cancelled.is_set():
                        raise QueryInterrupted(_INTERRUPTED) from None
                    if query is not None and query.ended.is_set():  # another batch of it failed
                        raise QueryInterrupted("query stopped: another part of it failed") from None
        except BaseException:
            future.cancel()
            if query is not None:
                self.end_query(query)
            self._barrier()  # the batch has let go of its requests: nothing more is sent for it
            for cache in {call.cache for call in calls if call.cache is not None}:
                cache.flush(timeout=1.0)  # what arrived before the interrupt is on disk for a re-run
            raise

    def hold(self, calls: Sequence[Call], query: Query) -> bool:
        """Starts `calls` ahead of DuckDB and keeps their answers until a batch takes them.
        Blocks while the query's look-ahead window is full; False once the query has stopped."""
        if not query.reserve(len(calls)):
            return False
        self._loop().call_soon_threadsafe(self._hold, list(calls), query)
        return True

    def end_query(self, query: Query) -> None:
        """Ends the query: stops its prefetch, drops what it held, sends nothing more for it, and
        stops its batches still waiting (safe to call more than once, from any thread)."""
        query.stopped.set()
        query.ended.set()
        loop = self._loop()
        loop.call_soon_threadsafe(self._drop_query, query)

    def cancel(self, which: Callable[[tuple], bool]) -> None:
        """Cancels and ends the running queries whose identity `which` accepts (aiquery/_process.py)."""
        for query in self._chosen(which):
            query.cancelled.set()
            self.end_query(query)

    def finish(self, which: Callable[[tuple], bool]) -> None:
        """Ends the queries whose identity `which` accepts: DuckDB has finished them."""
        for query in self._chosen(which):
            self.end_query(query)

    def _chosen(self, which: Callable[[tuple], bool]) -> list[Query]:
        with self._queries_lock:
            return [query for identity, query in list(self._queries.items()) if which(identity)]

    def _barrier(self, timeout: float = 5.0) -> None:
        """Returns once the loop has run what other threads handed it before this call."""
        try:
            asyncio.run_coroutine_threadsafe(_call(lambda: None), self._loop()).result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            pass  # a loop this busy still gets there; the caller has nothing to wait for

    def pending(self) -> int:
        """Requests sent and not yet answered, queued, or waiting to be retried, over every endpoint."""
        def count() -> int:
            queued = sum(not work.finished for rt in self._runtimes.values() for work in rt.queue)
            return queued + self._retrying + sum(rt.limits.concurrency.in_flight for rt in self._runtimes.values())
        return asyncio.run_coroutine_threadsafe(_call(count), self._loop()).result(timeout=10)

    def stats(self) -> dict[str, Usage]:
        """Usage per endpoint name since the engine started."""
        return {name: usage for name, _, usage in self.usage()}

    def usage(self) -> list[tuple[str, str | None, Usage]]:
        """(endpoint, model, usage) since the engine started."""
        return [(rt.endpoint.name, rt.endpoint.model, rt.stats) for rt in list(self._runtimes.values())]

    def query_usage(self) -> list[tuple[Query, str, str | None, Usage]]:
        """(query, endpoint, model, usage) of the running and the last finished queries, oldest first."""
        with self._queries_lock:
            queries = sorted({id(q): q for q in [*self._finished, *self._queries.values()]}.values(),
                             key=lambda q: q.number)
        return [(q, name, model, usage) for q in queries for (name, model), usage in list(q.usage.items())]

    def close(self) -> None:
        """Closes connections and stops the loop thread."""
        self._finalizer()

    # -- loop side ---------------------------------------------------------------------------
    def _runtime(self, endpoint: Endpoint, target: Target, price: Price | None) -> _Runtime:
        identity = (target.url, endpoint.model)
        rt = self._runtimes.get(identity)
        if rt is None:
            limits = EndpointLimits.create(endpoint.max_concurrency, endpoint.requests_per_minute,
                                           endpoint.tokens_per_minute)
            rt = self._runtimes[identity] = _Runtime(endpoint, limits, price)
        elif rt.endpoint is not endpoint:
            rt.endpoint, rt.price = endpoint, price
            rt.limits.configure(endpoint.max_concurrency, endpoint.requests_per_minute, endpoint.tokens_per_minute)
            rt.dimension = None  # another connection's settings: the model behind the URL may have changed since
        return rt

    async def _run(self, calls: Sequence[Call], fail_fast: bool, query: Query | None) -> list:
        if query is not None:
            query.active += 1
            if query.paused:
                self._resume(query)
        outcomes: list[Any] = [None] * len(calls)
        waiting: dict[bytes, list[int]] = {}
        try:
            keys = [call.key for call in calls]
            repeats = 0
            for i, key in enumerate(keys):
                if query is not None and key in query.memo:
                    outcomes[i] = query.memo[key]
                    repeats += 1
                else:
                    repeats += key in waiting
                    waiting.setdefault(key, []).append(i)
            if query is not None:
                query.deduplicated += repeats
            self._start([calls[rows[0]] for key, rows in waiting.items() if key not in self._entries], query)
            for key in waiting:
                self._entries[key].waiters += 1
            if query is not None:  # rows a prefetcher registered are now DuckDB's: free their window slots
                taken_holds = 0
                for key in keys:
                    if query.holds[key] > 0:
                        self._take_hold(key, query)
                        taken_holds += 1
                    elif query.may_read_ahead:
                        query.taken[key] += 1
                if taken_holds:
                    query.free(taken_holds)
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
                continue
            if query.taken[call.key] > 0:  # a batch got to this row first
                query.taken[call.key] -= 1
                if not query.taken[call.key]:
                    del query.taken[call.key]
            elif call.key not in query.memo:  # else a repeat of a request this query has answered
                fresh.append(call)
        if len(calls) > len(fresh):
            query.free(len(calls) - len(fresh))
        self._start([c for c in fresh if c.key not in self._entries], query)
        for call in fresh:
            key = call.key
            self._entries[key].held += 1
            query.holds[key] += 1

    def _take_hold(self, key: bytes, query: Query) -> None:
        """Gives up one hold of `key` (the caller frees its window slot)."""
        query.holds[key] -= 1
        if not query.holds[key]:
            del query.holds[key]
        entry = self._entries.get(key)
        if entry is not None:
            entry.held -= 1
            self._maybe_drop(key, entry)

    def _drop_query(self, query: Query) -> None:
        for key, count in list(query.holds.items()):
            for _ in range(count):
                self._take_hold(key, query)
            query.free(count)
        if query.parked:
            self._resume(query)  # what another query still needs is sent; the rest is finished and skipped
        with self._queries_lock:
            if self._queries.get(query.identity) is query:
                del self._queries[query.identity]
                query.finished = time.time() - (time.monotonic() - query.last_active)
                query.memo.clear()  # a finished query keeps its usage figures, not its answers
                query.taken.clear()
                if query.usage:
                    self._finished.append(query)

    async def _watch_queries(self) -> None:
        """Pauses and then ends queries DuckDB no longer runs (finished, failed, interrupted,
        stopped early by a LIMIT or by their reader, or their connection closed), and ends queries
        it cannot tell about once they have gone idle."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            with self._queries_lock:
                queries = list(self._queries.values())
            for query in queries:
                if query.active or query.udf_calls:
                    continue  # a batch of it is in ai_query: DuckDB runs it
                running = query.running is not None and query.running()
                query.seen_running = query.seen_running or running
                gone = not running
                # Nothing read ahead waits for it, and its read-ahead is not inside DuckDB: a query DuckDB
                # was seen running and no longer runs is over (if DuckDB only could not measure it,
                # its next batch starts it again).
                settled = query.seen_running and not query.holds and not query.prefetch_busy
                if gone and (settled or now - query.last_active > self._idle_end):
                    self._end_now(query)
                elif gone != query.paused:
                    query.paused = gone
                    if not gone:
                        self._resume(query)

    def _resume(self, query: Query) -> None:
        """Queues again, first, what was read ahead for `query` and held back while it was paused."""
        query.paused = False
        parked, query.parked = query.parked, []
        for rt, work in reversed(parked):
            rt.queue.appendleft(work)
        for rt in {id(rt): rt for rt, _ in parked}.values():
            self._pump(rt)

    def _end_now(self, query: Query) -> None:
        query.stopped.set()
        query.ended.set()
        self._drop_query(query)

    def _maybe_drop(self, key: bytes, entry: _Entry) -> None:
        """Forgets an entry nobody needs; stops its request if it is still pending for no one."""
        if entry.waiters > 0 or entry.held > 0:
            return
        del self._entries[key]
        work = entry.work
        if work is not None and not work.finished and not any(k in self._entries for k in work.keys):
            work.finished = True  # a queued request is skipped; one being sent is cancelled
            if work.worker is not None:
                work.worker.cancel()

    def _start(self, calls: list[Call], query: Query | None) -> None:
        """Creates entries for `calls` and queues their requests (embedding texts batched)."""
        loop = asyncio.get_running_loop()
        texts: dict[tuple, tuple[Call, dict[str, str]]] = {}
        touched = {}
        batched = []
        cached = self._cached([call for call in calls if call.cache is not None and call.key not in self._entries])
        for call in _by_prefix(calls):
            key = call.key
            if key in self._entries:
                continue
            self._entries[key] = _Entry(loop.create_future())
            if key in cached:
                self._entries[key].future.set_result(cached[key])
                for usage in self._usages(self._runtime(call.endpoint, call.target, call.price), query):
                    usage.cache_hits += 1
                continue
            if call.batch:
                batched.append(call)
            elif call.text is None:
                touched[id(self._queue(_Work({key: None}, call, query)))] = call
            else:
                group = (call.target.url, call.payload)
                texts.setdefault(group, (call, {}))[1][key] = call.text
        for call, by_key in texts.values():
            items = list(by_key.items())
            for start in range(0, len(items), call.endpoint.batch_size):
                touched[id(self._queue(_Work(dict(items[start:start + call.endpoint.batch_size]), call, query)))] = call
        for call in {id(c.target): c for c in touched.values()}.values():
            self._pump(self._runtime(call.endpoint, call.target, call.price))
        if batched:
            self._batches.add(batched, query)

    # What the batch dispatcher (aiquery/_batch.py) asks of the engine, on the loop.
    def _needs(self, key: bytes) -> bool:
        """Whether a batch or a prefetcher still waits for the answer to `key`."""
        return key in self._entries

    def _usages_for(self, call: Call, query: Query | None) -> list[Usage]:
        return self._usages(self._runtime(call.endpoint, call.target, call.price), query)

    def _over_budget_for(self, call: Call, query: Query | None) -> BudgetExceeded | None:
        rt = self._runtime(call.endpoint, call.target, call.price)
        return _over_budget(rt, self._usages(rt, query))

    def _answer_keys(self, outcomes: dict[bytes, Any]) -> None:
        """Hands entries their answers or errors, by key."""
        for key, outcome in outcomes.items():
            entry = self._entries.get(key)
            if entry is None or entry.future.done():
                continue
            if isinstance(outcome, BaseException):
                entry.future.set_exception(outcome)
                entry.future.exception()  # read by the batches waiting now; a row read ahead may never be
            else:
                entry.future.set_result(outcome)
            self._maybe_drop(key, entry)

    @staticmethod
    def _usages(rt: _Runtime, query: Query | None) -> list[Usage]:
        """Where a request's usage is counted: its endpoint, and the query that started it."""
        if query is None:
            return [rt.stats]
        key = (rt.endpoint.name, rt.endpoint.model)
        usage = query.usage.get(key)
        if usage is None:
            usage = query.usage[key] = Usage()
        return [rt.stats, usage]

    @staticmethod
    def _cached(calls: list[Call]) -> dict[bytes, _wire.Answer]:
        found: dict[bytes, _wire.Answer] = {}
        by_cache: dict[ResponseCache, list[bytes]] = {}
        for call in calls:
            by_cache.setdefault(call.cache, []).append(call.key)
        for cache, keys in by_cache.items():
            found.update(cache.get_many(keys))
        return found

    def _queue(self, work: _Work) -> _Runtime:
        for key in work.keys:
            self._entries[key].work = work
        rt = self._runtime(work.call.endpoint, work.call.target, work.call.price)
        rt.queue.append(work)
        return rt

    def _pump(self, rt: _Runtime) -> None:
        """Starts workers while there is queued work and room under the endpoint's limit."""
        loop = asyncio.get_running_loop()
        while rt.queue and rt.workers < int(rt.limits.concurrency.limit):
            rt.workers += 1
            loop.create_task(self._worker(rt))

    async def _worker(self, rt: _Runtime) -> None:
        try:
            while rt.queue and rt.workers <= int(rt.limits.concurrency.limit):
                work = rt.queue.popleft()
                query = work.query
                if query is not None and (query.ended.is_set() or query.paused) and not self._awaited(work):
                    if query.ended.is_set():
                        self._drop_query(query)  # its end may still be on its way to the loop: finishes `work`
                    else:
                        query.parked.append((rt, work))
                        continue
                if not work.finished:
                    work.worker = asyncio.current_task()
                    try:
                        await self._attempt(rt, work)
                    except Exception as exc:  # noqa: BLE001 - a bug of ours: its rows fail, the worker goes on
                        target = work.call.target
                        error = _reported(exc, work.call.endpoint, target.url, target.secrets, None)
                        for usage in self._usages(rt, work.query):
                            usage.fail(len(work.keys), error)
                        self._settle(work, [error] * len(work.keys))
                    work.worker = None
                    if rt.queue and rt.workers < int(rt.limits.concurrency.limit):
                        self._pump(rt)  # the limit grew (slow start, probing): use the new room
        except asyncio.CancelledError:
            pass  # its request was no longer needed (or the engine is closing)
        finally:
            rt.workers -= 1
            if rt.queue:
                self._pump(rt)

    async def _attempt(self, rt: _Runtime, work: _Work) -> None:
        """Sends `work` once; answers its entries, or queues it again after a wait if that may help."""
        call, endpoint, target = work.call, work.call.endpoint, work.call.target
        usages = self._usages(rt, work.query)
        transport = self._mounts.get(_scheme(target.url))  # its token requests, if any, go through it too
        refused = _over_budget(rt, usages) if transport is not None else self._unmounted(target.url, endpoint)
        if refused is not None:
            for usage in usages:
                usage.fail(len(work.keys), refused)
            self._settle(work, [refused] * len(work.keys))
            return
        texts = list(work.keys.values())
        if endpoint.task == "embeddings":
            body = _wire.embeddings_body(texts, call.body)
            payload = orjson.dumps(body)
        else:
            body, payload = call.body, call.payload
        limits = rt.limits
        if limits.requests_per_minute or limits.tokens_per_minute:
            await limits.admit(estimate_tokens(body) if limits.tokens_per_minute else 0)
        for usage in usages:
            usage.requests += 1
        ticket = limits.concurrency.start(retry=work.attempts > 0)
        status = None
        secrets = target.secrets
        try:
            headers = target.headers if target.auth is None else await target.auth.headers(transport)
            secrets = self._secrets(target, headers)
            started = time.monotonic()
            response = await transport.post(target.url, headers, payload, endpoint.timeout,
                                            endpoint.max_response_bytes)
            for _ in range(AUTH_RESENDS if target.auth is not None else 0):
                if response.status != 401 or not await target.auth.refused(headers, transport):
                    break
                headers = await target.auth.headers(transport)  # a newer token: send once more
                secrets = self._secrets(target, headers)
                for usage in usages:
                    usage.requests += 1
                    usage.retries += 1
                response = await transport.post(target.url, headers, payload, endpoint.timeout,
                                                endpoint.max_response_bytes)
            if secrets:
                response = _without_secrets(response, secrets)
            status = response.status
            if not 200 <= status < 300:
                raise _status_error(endpoint, target, response)
            if endpoint.task == "embeddings":
                vectors, tokens = _wire.parse_embeddings(response.body, endpoint.name, len(texts))
                _check_dimension(rt, vectors)
                answers: list[Any] = [_wire.Answer(v, tokens if len(texts) == 1 else {}) for v in vectors]
            else:
                answers = [_PARSERS[endpoint.task](response.body, endpoint.name, body)]
                tokens = answers[0].usage
            for answer in answers:
                answer.attempts = work.attempts + 1
            for usage in usages:
                usage.answer(len(answers), tokens, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong fails this request's rows, nothing else
            work.attempts += 1
            exc = _reported(exc, endpoint, target.url, secrets, status, work.attempts)
            now = time.monotonic()
            work.first_failure = work.first_failure or now
            wait = retry_wait(exc, work.attempts, now - work.first_failure, endpoint.max_attempts,
                              endpoint.max_retry_time, self._jitter)
            for usage in usages:
                usage.throttled += status == 429
                if wait is not None:
                    usage.retries += 1
                else:
                    usage.fail(len(work.keys), exc)
            if wait is not None:
                asyncio.get_running_loop().create_task(self._retry_later(rt, work, wait))
                return
            answers = [exc] * len(work.keys)
        finally:
            limits.concurrency.finish(ticket, throttled=status == 429, failed=status is None or status >= 300)
        if call.cache is not None and not isinstance(answers[0], BaseException):
            for key, answer in zip(work.keys, answers):
                call.cache.put(key, endpoint.name, endpoint.model, answer, usages)
        self._settle(work, answers)

    def _unmounted(self, url: str, endpoint: Endpoint) -> ConfigError:
        scheme = _scheme(url)
        return ConfigError(f"endpoint {endpoint.name!r}: no transport is mounted for {scheme or url!r} URLs ({url}); "
                           f"this engine mounts {', '.join(self._mounts) or 'none'}: pass "
                           f"Engine(mounts={{{scheme!r}: transport}}) to send there")

    def _awaited(self, work: _Work) -> bool:
        """Whether a batch waits for the answer of `work` (else it was only read ahead)."""
        return any(entry.waiters for entry in map(self._entries.get, work.keys) if entry is not None)

    def _settle(self, work: _Work, answers: list[Any]) -> None:
        """Hands each of the work's entries its answer or error."""
        work.finished = True
        for key, answer in zip(work.keys, answers):
            entry = self._entries.get(key)
            if entry is None or entry.future.done():
                continue
            if isinstance(answer, BaseException):
                entry.future.set_exception(answer)
            else:
                entry.future.set_result(answer)
            self._maybe_drop(key, entry)

    async def _retry_later(self, rt: _Runtime, work: _Work, wait: float) -> None:
        self._retrying += 1
        try:
            await self._sleep(wait)
        finally:
            self._retrying -= 1
        if not work.finished:
            rt.queue.appendleft(work)  # a retry goes before rows that have not been tried yet
            self._pump(rt)


async def _call(function: Callable[[], Any]) -> Any:
    return function()


def _by_prefix(calls: Sequence[Call]) -> Sequence[Call]:
    """Prefix-aware dispatch: of the calls of endpoints with prefix_dispatch on, those whose prompt
    is longer than PREFIX_CHARS are grouped by that much of its start, each group where its first
    call was, in row order within it: requests that share a long prefix go out one after another,
    so a provider's prefix cache can serve them. Shorter prompts keep their places."""
    groups: dict[Any, list[Call]] = {}
    for i, call in enumerate(calls):
        text = _wire.prompt_text(call.body) if call.endpoint.prefix_dispatch else ""
        groups.setdefault((id(call.target), text[:PREFIX_CHARS]) if len(text) > PREFIX_CHARS else i, []).append(call)
    if len(groups) == len(calls):
        return calls
    return [call for group in groups.values() for call in group]


def _check_dimension(rt: _Runtime, vectors: list[list[float]]) -> None:
    """An endpoint's vectors must all have one dimension (the first answer's), or they cannot be compared."""
    sizes = sorted({len(v) for v in vectors})
    if rt.dimension is None and len(sizes) > 1:
        raise ResponseError(f"endpoint {rt.endpoint.name!r} answered vectors of different dimensions "
                            f"({', '.join(map(str, sizes))}) in one response", endpoint=rt.endpoint.name, status=200)
    expected = rt.dimension or sizes[0]
    if sizes != [expected]:
        others = ", ".join(str(n) for n in sizes if n != expected)
        raise ResponseError(f"endpoint {rt.endpoint.name!r} answered vectors of {others} dimensions where its "
                            f"vectors have {expected}: check that every request goes to the same embedding model",
                            endpoint=rt.endpoint.name, status=200)
    rt.dimension = expected


def _over_budget(rt: _Runtime, usages: list[Usage]) -> BudgetExceeded | None:
    """The error for a request that would go past a token or cost budget of its endpoint or query."""
    endpoint = rt.endpoint
    limits = [("budget_tokens", "budget_usd", "the endpoint", usages[0])]
    if len(usages) > 1:
        limits.append(("query_budget_tokens", "query_budget_usd", "this query", usages[1]))
    for tokens_setting, usd_setting, scope, usage in limits:
        tokens, usd = getattr(endpoint, tokens_setting), getattr(endpoint, usd_setting)
        used = usage.prompt_tokens + usage.completion_tokens
        if tokens is not None and used >= tokens:
            return BudgetExceeded(f"budget exceeded: endpoint {endpoint.name!r} used {used:,} tokens for {scope}, "
                                  f"its {tokens_setting} is {tokens:,}; raise it to send the remaining rows")
        cost = usage.cost(rt.price) if usd is not None else None
        if cost is not None and cost >= usd:
            return BudgetExceeded(f"budget exceeded: endpoint {endpoint.name!r} spent ${cost:,.4f} for {scope}, "
                                  f"its {usd_setting} is ${usd:,.4f}; raise it to send the remaining rows")
    return None


def default_mounts(transport: Transport | None = None) -> dict[str, Transport]:
    """The transport of each URL scheme an endpoint can have: http(s) through `transport` (by
    default aiohttp in a child process on POSIX, in this process elsewhere), local:// (the
    built-in models) answered in this process."""
    http = transport or (ProcessTransport() if os.name == "posix" else AiohttpTransport())
    return {"http://": http, "https://": http, f"{LOCAL_SCHEME}://": LocalTransport()}


def _scheme(url: str) -> str:
    """"https://" of "https://host/path": the key of the URL's transport in an engine's mounts."""
    head, sep, _ = url.partition("://")
    return head + sep if sep else ""


def _mounted(transport: Transport | None, mounts: Mapping[str, Transport | None]) -> dict[str, Transport]:
    for scheme, mounted in mounts.items():
        if not (isinstance(scheme, str) and re.fullmatch(r"[a-z][a-z0-9+.-]*://", scheme)):
            raise ConfigError(f"mounts key {scheme!r} is not a URL scheme like 'https://'")
        if mounted is not None and not callable(getattr(mounted, "post", None)):
            raise ConfigError(f"mounts[{scheme!r}] has no async post(url, headers, body, timeout, max_bytes): "
                              "give a transport (aiquery.HttpxTransport(), aiquery.AiohttpTransport(), ...) or None")
    chosen = {**default_mounts(transport), **mounts}
    return {scheme: mounted for scheme, mounted in chosen.items() if mounted is not None}


def _shutdown(queries: dict[tuple, Query], loop_thread: _LoopThread, transports: tuple[Transport, ...]) -> None:
    for query in list(queries.values()):
        query.stopped.set()
    for query in list(queries.values()):
        if query.prefetcher is not None:
            query.prefetcher.join(timeout=1)  # it lets go of its cursor before DuckDB shuts down
    loop_thread.stop(transports)


def _without_secrets(response: Response, secrets: Secrets) -> Response:
    """A server may echo the key anywhere (the answer, an error body, a Location): redacted before
    anything reads it. The same response when it holds none."""
    body = secrets.redact_bytes(response.body)
    if response.headers:
        return Response(response.status, {k: secrets.redact(v) for k, v in response.headers.items()}, body)
    return response if body is response.body else Response(response.status, response.headers, body)


def _reported(exc: Exception, endpoint: Endpoint, url: str, secrets: Secrets, status: int | None,
              attempts: int | None = None) -> AIQueryError:
    """`exc` as the AIQueryError a row reports, after `attempts` requests: a transport's failure
    named for the endpoint (transport_failure), printable, without the keys the request carried.
    Anything else (a bug of ours, or of a library under us) becomes a RequestError that is not retried."""
    if isinstance(exc, (SendError, BodyError, Unavailable)):
        exc = transport_failure(exc, endpoint.name, url, endpoint.timeout, endpoint.max_response_bytes)
    elif not isinstance(exc, AIQueryError):
        exc = RequestError(f"endpoint {endpoint.name!r}: reading the answer from {url} failed "
                           f"({type(exc).__name__}: {shorten(str(exc))}); please report this as a bug",
                           endpoint=endpoint.name, status=status)
    message = str(exc)
    clean = secrets.redact(printable(message))
    if clean != message:
        exc.args = (clean,)
    exc.attempts = attempts  # for details => true
    return exc


def transport_failure(exc: SendError | BodyError | Unavailable, endpoint: str, url: str, timeout: float,
                      limit: int, say: Callable[[str], str] | None = None) -> AIQueryError:
    """The error users read for what a transport raised (aiquery/_transport.py: transports name no
    endpoint). `say` turns the text into the message (default: it after the endpoint's name); the
    token requests of aiquery/_auth.py add where the credentials came from."""
    say = say or (lambda text: f"endpoint {endpoint!r}: {text}")
    if isinstance(exc, Unavailable):
        return ConfigError(say(str(exc)))
    if isinstance(exc, BodyError):
        # A body too large or in an encoding we cannot decode will be the same next time: not retried.
        status = exc.status
        if exc.kind == "too_large":
            what = "decompresses to more than" if str(exc) == "decompressed" else "is larger than"
            text = (f"the HTTP {status} answer from {url} {what} max_response_bytes ({limit:,} bytes); raise "
                    "max_response_bytes in the endpoint's settings if answers this large are expected")
            return ResponseError(say(text), endpoint=endpoint, status=status)
        if exc.kind == "undecodable":
            text = (f"the HTTP {status} answer from {url} has Content-Encoding {shorten(str(exc), 40)!r}, which "
                    "aiquery neither asked for nor can decode (it accepts gzip and deflate)")
            return ResponseError(say(text), endpoint=endpoint, status=status)
        return ResponseError(say(f"the HTTP {status} answer from {url} could not be read: {exc}"), endpoint=endpoint,
                             status=status, retryable=True)
    # str(exc) is a client library's message, which may quote what the server sent (a bad header line)
    detail = shorten(str(exc)) if str(exc) else ""
    if isinstance(exc, SendTimeout):
        text = (f"request failed to {url}: {detail}" if detail else
                f"no complete answer from {url} within {timeout:g} s (raise the endpoint's timeout setting if the "
                "model is slow)")
        return RequestTimeout(say(text), endpoint=endpoint, retryable=True)
    return TransportError(say(f"request failed to {url}: {detail or type(exc).__name__}"), endpoint=endpoint,
                          retryable=True)


def _status_error(endpoint: Endpoint, target: Target, response: Response) -> HTTPStatusError:
    status = response.status
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    message = _wire.error_text(response.body)
    text = f"endpoint {endpoint.name!r}: HTTP {status} {reason} from {target.url}: {message}"
    hint = ""
    if status in (401, 403) and target.auth is not None:
        hint = (f"{target.auth.describe()}; " +
                ("the token was refused even after a refresh: check that these credentials belong to this workspace"
                 if status == 401 else "check that this identity may query the endpoint (CAN QUERY permission)"))
    elif status in (401, 403):
        hint = (f"The key came from {target.key_source}; check that it is valid for this endpoint"
                if target.key_source else
                "No key was sent: set api_key_env to the environment variable that holds the key")
    elif 300 <= status < 400:
        location = shorten(response.headers.get("location", "?"), 200)
        hint = (f"Redirect to {location} not followed (a key is only sent to its own endpoint): set "
                "base_url/host to the final URL")
    elif status == 404:
        hint = "Check base_url (or host) and model in the endpoint settings"
    if hint:
        text = f"{text.rstrip('.')}. {hint}"  # a provider's message ends with a full stop often enough
    return HTTPStatusError(text, endpoint=endpoint.name, status=status,
                           retryable=is_retryable_status(status),
                           retry_after=parse_retry_after(response.headers))
