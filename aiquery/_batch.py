"""Batch mode: rows sent through a provider's batch API at its batch price (half, at OpenAI).

An endpoint with `batch = true`, or an ai_query call with `batch => true`, sends the rows the
response cache cannot answer as batch files instead of one request each, on OpenAI-compatible
servers: `POST {base_url}/files` (purpose "batch", one JSONL line per request:
{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}), then `POST /batches`,
then `GET /batches/{id}` until the batch is completed, failed, expired or cancelled, then the
output and error files (`GET /files/{id}/content`), whose lines carry each request's custom_id.
The custom_id is the request's key in hex: the same key as the response cache's.

How a query's rows become batches. The engine hands this module every batch-mode call it would
have queued (BatchDispatcher.add), the read-ahead's rows included: a batch-mode query reads up to
BATCH_LOOKAHEAD rows ahead of DuckDB. Calls gather per endpoint URL and model until none arrived
for BATCH_GATHER seconds or a file is full (batch_max_requests lines, batch_max_bytes); the
gathered calls then become one file and one batch. So a query of up to 50,000 rows that can read
ahead is one batch; DuckDB's first call waits for it, and the rest of its calls find the answers.

Never paying twice. BatchStore keeps, in `batches.sqlite3` beside the response cache, each batch
and the request keys it holds. The order is: upload the file (free), record it with its keys,
create the batch (the step that is paid for), record the batch's id. A call whose key is in a
batch not collected yet joins that batch, in this process or after a restart: it is polled, never
sent again. A batch recorded with its file but without its id (the process was killed between the
two) is looked for among the provider's batches by input file before one is created.

When a batch ends, its answers go to the response cache and to the rows waiting for them; an error
line becomes that row's error (HTTPStatusError); a row with neither, or every row of a batch that
failed, gets a BatchError. A batch nobody waits for any more (the query was interrupted or
failed) is no longer polled: it runs on at the provider and stays pending in the store, where
`aiquery batches` shows it, and running the statement again resumes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from . import _wire
from ._config import BATCH_GATHER, Endpoint
from ._datasets import cache_dir
from ._errors import AIQueryError, BatchError, ConfigError, HTTPStatusError, RequestError, ResponseError
from ._providers import Target, join_path
from ._retry import retry_wait, wait_after
from ._scrub import safe_url, shorten
from ._http_child import BodyError
from ._transport import Response, SendError, SendTimeout, Unavailable, httpx_client, read_httpx_answer

if TYPE_CHECKING:
    from ._calls import Call
    from ._engine import Engine
    from ._query import Query

STORE_NAME = "batches.sqlite3"
TERMINAL = ("completed", "failed", "expired", "cancelled")
TASK_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
LINE_OVERHEAD = 120   # bytes a JSONL line adds to its body (custom_id, method, url)
MIN_TRANSFER_RATE = 256 << 10  # bytes/s: a batch file's transfer gets its timeout plus a second per 256 KiB
FIND_PAGES = 10       # pages of 100 batches searched for one whose creation was not recorded
_LOOKUP_CHUNK = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,            -- aiquery's own id, known before the batch is created
    endpoint TEXT NOT NULL,
    model TEXT,
    base_url TEXT NOT NULL,
    task TEXT NOT NULL,
    file_id TEXT NOT NULL,          -- the uploaded input file
    batch_id TEXT,                  -- the provider's id, once it gave one
    status TEXT NOT NULL,           -- 'submitting', then the provider's status
    collected INTEGER NOT NULL DEFAULT 0,  -- 1: its results were read and handed out (or abandoned)
    requests INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    message TEXT
);
CREATE TABLE IF NOT EXISTS batch_keys (
    key BLOB NOT NULL,
    batch TEXT NOT NULL,
    PRIMARY KEY (key, batch)
) WITHOUT ROWID;
"""
COLUMNS = ("id", "endpoint", "model", "base_url", "task", "file_id", "batch_id", "status", "collected", "requests",
           "completed", "failed", "prompt_tokens", "completion_tokens", "cached_tokens", "created", "updated",
           "message")


def store_path(cache_path: Path | None) -> Path:
    """The batch store beside the response cache file (or in the default cache directory)."""
    return (cache_path.parent if cache_path is not None else cache_dir()) / STORE_NAME


class BatchStore:
    """The batches submitted and the request keys each holds, in one SQLite file (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"batch store {str(self.path)!r} cannot be opened: {exc}. Set AIQUERY_CACHE_DIR "
                              "to a writable directory") from None

    def __repr__(self) -> str:
        return f"<aiquery.BatchStore {str(self.path)!r}>"

    def record(self, row: dict[str, Any], keys: Iterable[bytes]) -> None:
        """A batch about to be created, with every key it holds, in one transaction."""
        row = {**row, "created": time.time(), "updated": time.time()}
        with self._lock, self._con:
            self._con.execute("BEGIN IMMEDIATE")
            self._con.execute(f"INSERT INTO batches ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                              list(row.values()))
            self._con.executemany("INSERT OR IGNORE INTO batch_keys (key, batch) VALUES (?, ?)",
                                  [(key, row["id"]) for key in keys])

    def update(self, batch: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        with self._lock:
            self._con.execute(f"UPDATE batches SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                              [*fields.values(), batch])

    def get(self, batch: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._con.execute(f"SELECT {', '.join(COLUMNS)} FROM batches WHERE id = ? OR batch_id = ?",
                                    [batch, batch]).fetchone()
        return dict(zip(COLUMNS, row)) if row else None

    def rows(self) -> list[dict[str, Any]]:
        """Every batch, newest first."""
        with self._lock:
            rows = self._con.execute(f"SELECT {', '.join(COLUMNS)} FROM batches ORDER BY created DESC").fetchall()
        return [dict(zip(COLUMNS, row)) for row in rows]

    def pending(self, keys: list[bytes]) -> dict[bytes, str]:
        """The batch not collected yet that holds each of `keys`, for those in one."""
        found: dict[bytes, str] = {}
        with self._lock:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                found.update(self._con.execute(
                    "SELECT k.key, b.id FROM batch_keys k JOIN batches b ON b.id = k.batch "
                    f"WHERE b.collected = 0 AND k.key IN ({','.join('?' * len(chunk))})", chunk).fetchall())
        return found

    def keys_of(self, batch: str) -> list[bytes]:
        with self._lock:
            return [key for (key,) in self._con.execute("SELECT key FROM batch_keys WHERE batch = ?", [batch])]

    def close(self) -> None:
        with self._lock:
            self._con.close()


def base_url(target: Target, task: str) -> str:
    """The OpenAI-compatible base URL (".../v1") of a resolved chat/completions/embeddings URL, with
    its query string (Azure's ?api-version=..., a gateway's ?key=...), which every batch API request carries."""
    parts = urlsplit(target.url)
    return urlunsplit(parts._replace(path=parts.path.removesuffix(TASK_PATHS[task])))


def request_line(call: Call) -> bytes:
    """One JSONL line of a batch input file: the request exactly as it would be sent online."""
    body = _wire.embeddings_body([call.text], call.body) if call.text is not None else call.body
    return orjson.dumps({"custom_id": call.key.hex(), "method": "POST", "url": "/v1" + TASK_PATHS[call.endpoint.task],
                         "body": body}) + b"\n"


async def _paced(chunks, deadline: asyncio.Timeout, due: float):
    """`chunks` as they arrive, moving `deadline` on by a second per MIN_TRANSFER_RATE bytes received."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        deadline.reschedule(due + received / MIN_TRANSFER_RATE)
        yield chunk


class BatchClient:
    """The provider's files and batches API for one endpoint, over httpx (a few requests per batch)."""

    def __init__(self, endpoint: Endpoint, target: Target, http: httpx.AsyncClient, base: str) -> None:
        self.endpoint, self.target, self.http, self.base = endpoint, target, http, base
        self._headers = {k: v for k, v in target.headers.items() if k.lower() != "content-type"}

    async def _request(self, method: str, path: str, limit: int | None = None, sent: int = 0,
                       **options: Any) -> Response:
        """The provider's answer, 2xx, with the keys this request carried redacted from it (a server
        may echo them, see aiquery/_scrub.py); an AIQueryError naming the endpoint otherwise.
        Read as the online transports read: within `limit` bytes raw and decompressed (default
        max_response_bytes), and within the timeout, stretched for `sent` bytes and for every
        byte received at MIN_TRANSFER_RATE (a batch file may take longer; a trickle is cut off)."""
        from ._engine import _reported, _status_error, _without_secrets

        url, secrets, timeout = join_path(self.base, path), self.target.secrets, self.endpoint.timeout
        limit = limit or self.endpoint.max_response_bytes
        due = asyncio.get_running_loop().time() + timeout + sent / MIN_TRANSFER_RATE
        try:
            async with asyncio.timeout_at(due) as deadline:
                async with self.http.stream(method, url, headers=self._headers, timeout=timeout, **options) as resp:
                    answer = await read_httpx_answer(resp, limit, lambda chunks: _paced(chunks, deadline, due))
        except (TimeoutError, httpx.TimeoutException):
            raise _reported(SendTimeout(), self.endpoint, url, secrets, None) from None
        except httpx.HTTPError as exc:
            raise _reported(SendError(str(exc) or type(exc).__name__), self.endpoint, url, secrets, None) from None
        except BodyError as exc:
            if exc.kind == "too_large" and limit != self.endpoint.max_response_bytes:
                what = "decompresses to more than" if str(exc) == "decompressed" else "is larger than"
                raise ResponseError(f"endpoint {self.endpoint.name!r}: the batch file from {safe_url(url)} {what} "
                                    f"{limit:,} bytes (max_response_bytes for each of its requests); raise "
                                    "max_response_bytes in the endpoint's settings if answers this large are expected",
                                    endpoint=self.endpoint.name, status=exc.status) from None
            raise _reported(exc, self.endpoint, url, secrets, exc.status) from None
        answer = _without_secrets(answer, secrets)
        if not 200 <= answer.status < 300:
            error = _status_error(self.endpoint, dataclasses.replace(self.target, url=safe_url(url)), answer)
            raise _reported(error, self.endpoint, url, secrets, answer.status)
        return answer

    async def _json(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        response = await self._request(method, path, **options)
        try:
            data = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ResponseError(f"endpoint {self.endpoint.name!r}: {method} {safe_url(join_path(self.base, path))} "
                                f"answered {response.status} without a JSON object", endpoint=self.endpoint.name,
                                status=response.status, retryable=True)
        return data

    async def upload(self, content: bytes, filename: str) -> str:
        data = await self._json("POST", "/files", sent=len(content), data={"purpose": "batch"},
                                files={"file": (filename, content, "application/jsonl")})
        if not isinstance(data.get("id"), str):
            raise ResponseError(f"endpoint {self.endpoint.name!r}: the file upload answered no file id",
                                endpoint=self.endpoint.name, status=200)
        return data["id"]

    async def create(self, file_id: str, path: str, window: str, metadata: dict[str, str]) -> dict[str, Any]:
        return self._batch(await self._json("POST", "/batches", json={
            "input_file_id": file_id, "endpoint": path, "completion_window": window, "metadata": metadata}))

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._batch(await self._json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._batch(await self._json("POST", f"/batches/{batch_id}/cancel"))

    async def find(self, file_id: str) -> dict[str, Any] | None:
        """The batch created over `file_id`, among the provider's latest batches; None if there is none."""
        after = None
        for _ in range(FIND_PAGES):
            page = await self._json("GET", "/batches", params={"limit": 100, **({"after": after} if after else {})})
            batches = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for batch in batches:
                if batch.get("input_file_id") == file_id:
                    return self._batch(batch)
            if not page.get("has_more") or not batches:
                return None
            after = batches[-1].get("id")
        return None

    async def content(self, file_id: str, requests: int) -> bytes:
        """An output or error file of a batch of `requests` requests: a line each, each answer
        within max_response_bytes (as online), so the file within `requests` times that."""
        limit = max(requests, 1) * self.endpoint.max_response_bytes
        return (await self._request("GET", f"/files/{file_id}/content", limit=limit)).body

    def _batch(self, data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data.get("id"), str) or not isinstance(data.get("status"), str):
            raise ResponseError(f"endpoint {self.endpoint.name!r}: the batch API answered without a batch id "
                                "and status", endpoint=self.endpoint.name, status=200)
        return data


def progress_fields(batch: dict[str, Any]) -> dict[str, Any]:
    """The store's columns for a batch object: status, request counts and usage so far."""
    counts = batch.get("request_counts") if isinstance(batch.get("request_counts"), dict) else {}
    usage = batch.get("usage") if isinstance(batch.get("usage"), dict) else {}
    tokens = _wire._usage({"usage": usage}) if usage else {}
    fields = {"status": batch["status"], "completed": counts.get("completed") or 0,
              "failed": counts.get("failed") or 0}
    if tokens:
        fields.update(prompt_tokens=tokens.get("prompt_tokens", 0), completion_tokens=tokens.get("completion_tokens", 0),
                      cached_tokens=tokens.get("cached_tokens", 0))
    return fields


def _batch_failure(batch: dict[str, Any]) -> str:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    messages = [f"{e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
                for e in data or [] if isinstance(e, dict)]
    return shorten("; ".join(messages)) or "no reason given"


@dataclass
class _Job:
    """A batch this process polls (submitted now or found in the store), and the rows waiting for it."""

    id: str
    endpoint: Endpoint
    target: Target
    store: BatchStore
    calls: dict[bytes, tuple[Call, Query | None]] = field(default_factory=dict)
    content: bytes = b""  # the input file, for a batch this process submits
    keys: list[bytes] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Gathering:
    calls: dict[bytes, tuple[Call, Query | None]] = field(default_factory=dict)
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class BatchDispatcher:
    """The engine's batch mode: gathers calls into files, submits, polls, hands answers out.

    Runs on the engine's loop. It holds the engine weakly (the engine holds it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)
        self._stores: dict[Path, BatchStore] = {}
        self._gathering: dict[tuple, _Gathering] = {}
        self._jobs: dict[str, _Job] = {}
        self._job_of: dict[bytes, _Job] = {}  # the keys of this process's batches, recorded in the store or not yet
        self._http: httpx.AsyncClient | None = None

    def store(self, call: Call) -> BatchStore:
        path = store_path(call.cache.path if call.cache is not None else None).resolve()
        store = self._stores.get(path)
        if store is None:
            store = self._stores[path] = BatchStore(path)
        return store

    def add(self, calls: list[Call], query: Query | None) -> None:
        """Takes batch-mode calls whose entries the engine made: joins them to pending batches that
        hold their keys, else gathers them for a new batch."""
        by_store: dict[BatchStore, list[Call]] = {}
        for call in calls:
            by_store.setdefault(self.store(call), []).append(call)
        for store, group in by_store.items():
            pending = store.pending([call.key for call in group if call.key not in self._job_of])
            for call in group:
                job = self._job_of.get(call.key)
                batch = pending.get(call.key)
                if job is None and batch is not None:
                    job = self._jobs.get(batch) or self._resume(store, batch, call)
                if job is not None:
                    job.calls[call.key] = (call, query)
                    self._job_of[call.key] = job
                else:
                    self._gather(store, call, query)

    def _resume(self, store: BatchStore, batch: str, call: Call) -> _Job:
        job = self._jobs[batch] = _Job(batch, call.endpoint, call.target, store)
        asyncio.get_running_loop().create_task(self._run(job))
        return job

    def _forget(self, job: _Job) -> None:
        self._jobs.pop(job.id, None)
        for key in [*job.keys, *job.calls]:
            if self._job_of.get(key) is job:
                del self._job_of[key]

    def _gather(self, store: BatchStore, call: Call, query: Query | None) -> None:
        group = (store.path, call.target.url, call.body.get("model"))
        gathering = self._gathering.get(group)
        if gathering is None:
            gathering = self._gathering[group] = _Gathering()
        elif call.key in gathering.calls:
            return
        line = request_line(call)
        endpoint = call.endpoint
        if gathering.calls and (len(gathering.calls) >= endpoint.batch_max_requests
                                or gathering.size + len(line) > endpoint.batch_max_bytes):
            self._flush(group)
            gathering = self._gathering[group] = _Gathering()
        gathering.calls[call.key] = (call, query)
        gathering.lines.append(line)
        gathering.size += len(line)
        if gathering.timer is not None:
            gathering.timer.cancel()
        gathering.timer = asyncio.get_running_loop().call_later(BATCH_GATHER, self._flush, group)

    def _flush(self, group: tuple) -> None:
        """Submits what gathered for `group`: the rows somebody still waits for."""
        gathering = self._gathering.pop(group, None)
        engine = self._engine()
        if gathering is None or engine is None:
            return
        if gathering.timer is not None:
            gathering.timer.cancel()
        wanted = [(key, line) for key, line in zip(gathering.calls, gathering.lines) if engine._needs(key)]
        if not wanted:
            return
        first, _ = gathering.calls[wanted[0][0]]
        refused = {}
        for key, _ in wanted:
            call, query = gathering.calls[key]
            error = engine._over_budget_for(call, query)
            if error is not None:
                refused[key] = error
                for usage in engine._usages_for(call, query):
                    usage.fail(1, error)
        engine._answer_keys(refused)
        wanted = [(key, line) for key, line in wanted if key not in refused]
        if not wanted:
            return
        job = _Job(uuid.uuid4().hex, first.endpoint, first.target, self.store(first),
                   {key: gathering.calls[key] for key, _ in wanted}, b"".join(line for _, line in wanted),
                   [key for key, _ in wanted])
        self._jobs[job.id] = job
        self._job_of.update(dict.fromkeys(job.keys, job))
        asyncio.get_running_loop().create_task(self._run(job))

    def _client(self, job: _Job) -> BatchClient:
        if self._http is None:
            try:
                self._http = httpx_client()
            except Unavailable as exc:
                raise ConfigError(f"endpoint {job.endpoint.name!r}: {exc}") from None
        return BatchClient(job.endpoint, job.target, self._http, base_url(job.target, job.endpoint.task))

    async def _retrying(self, job: _Job, action, *args):
        """`action(*args)`, tried again after a wait while the error is transient (within the
        endpoint's max_attempts and max_retry_time)."""
        attempts, first_failure = 0, None
        while True:
            try:
                return await action(*args)
            except RequestError as exc:
                attempts += 1
                first_failure = first_failure or time.monotonic()
                wait = retry_wait(exc, attempts, time.monotonic() - first_failure, job.endpoint.max_attempts,
                                  job.endpoint.max_retry_time)
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    def _waiting(self, job: _Job) -> bool:
        engine = self._engine()
        return engine is not None and any(engine._needs(key) for key in job.calls)

    async def _run(self, job: _Job) -> None:
        endpoint, store = job.endpoint, job.store
        batch: dict[str, Any] | None = None
        try:
            client = self._client(job)
            if job.content:  # a new batch: upload (free), record, then create (paid)
                file_id = await self._retrying(job, client.upload, job.content, f"aiquery-{job.id}.jsonl")
                job.content = b""
                await asyncio.to_thread(store.record, {
                    "id": job.id, "endpoint": endpoint.name, "model": job.calls[job.keys[0]][0].body.get("model"),
                    "base_url": safe_url(client.base), "task": endpoint.task, "file_id": file_id, "status": "submitting",
                    "requests": len(job.keys)}, job.keys)
            row = store.get(job.id)
            if row is None:
                return
            if row["batch_id"] is None:
                batch = await self._create(job, client, row)
                if batch is None:
                    return
            while True:
                if batch is None or batch["status"] not in TERMINAL:
                    if not self._waiting(job):
                        return  # nobody waits: it goes on at the provider, and stays pending in the store
                    if endpoint.batch_max_wait is not None and time.monotonic() - job.started > endpoint.batch_max_wait:
                        self._still_running(job, row, batch)
                        return
                    if batch is not None:
                        await asyncio.sleep(endpoint.batch_poll_interval)
                    batch = await self._retrying(job, client.retrieve, row["batch_id"] or batch["id"])
                    store.update(job.id, batch_id=batch["id"], **progress_fields(batch))
                if batch["status"] in TERMINAL:
                    await self._collect(job, client, batch)
                    return
        except AIQueryError as exc:
            failure = exc
            try:
                failure = self._unknown_batch(job, exc) if isinstance(exc, HTTPStatusError) else exc
            finally:  # the rows fail even if that does
                self._fail(job, failure)
        except Exception as exc:  # a defect here must fail the rows, never leave them waiting
            self._fail(job, BatchError(f"endpoint {endpoint.name!r}: batch {job.id} failed in aiquery "
                                       f"({type(exc).__name__}: {exc}); its rows were not answered",
                                       endpoint=endpoint.name, batch_id=job.id))
            raise
        finally:
            self._forget(job)

    @staticmethod
    def _unknown_batch(job: _Job, exc: HTTPStatusError) -> AIQueryError:
        """`exc`, or for a 404 about a batch recorded in the store (deleted at the provider, or
        another account's) a BatchError saying so; the batch is marked missing, so that its rows
        go in a new batch next time."""
        row = job.store.get(job.id)  # None when the upload failed: nothing was recorded
        if exc.status != 404 or row is None or not row["batch_id"]:
            return exc
        job.store.update(job.id, status="missing", collected=1, message=str(exc))
        name, said = job.endpoint.name, str(exc).removeprefix(f"endpoint {job.endpoint.name!r}: ")
        return BatchError(f"endpoint {name!r}: batch {row['batch_id']}, which {job.store.path.name} holds these rows "
                          f"in, is unknown to the provider ({said}). It is marked missing: running the statement "
                          "again sends its rows in a new batch", endpoint=name, batch_id=row["batch_id"], status=404)

    async def _create(self, job: _Job, client: BatchClient, row: dict[str, Any]) -> dict[str, Any] | None:
        """Creates the batch over the recorded file, unless one was created already (a kill or a
        lost answer between creating and recording); None when nobody waits for it any more."""
        # A batch found in the store (not submitted by this process) may have been created already.
        batch = None if job.keys else await self._retrying(job, client.find, row["file_id"])
        while batch is None:
            if not self._waiting(job):
                job.store.update(job.id, status="abandoned", collected=1,
                                 message="not created: no query waited for it any more")
                return None
            try:
                batch = await client.create(row["file_id"], "/v1" + TASK_PATHS[job.endpoint.task],
                                            job.endpoint.batch_completion_window, {"aiquery_batch": job.id})
            except RequestError as exc:
                if not exc.retryable:
                    job.store.update(job.id, status="failed", collected=1, message=str(exc))
                    raise
                await asyncio.sleep(wait_after(exc, 1))
                batch = await self._retrying(job, client.find, row["file_id"])  # the lost answer may have created it
        job.store.update(job.id, batch_id=batch["id"], **progress_fields(batch))
        row["batch_id"] = batch["id"]
        return batch

    async def _collect(self, job: _Job, client: BatchClient, batch: dict[str, Any]) -> None:
        """Reads an ended batch's output and error files: answers to the cache and the waiting
        rows, errors to their rows; marks the batch collected."""
        endpoint, batch_id, status = job.endpoint, batch["id"], batch["status"]
        keys = job.keys or await asyncio.to_thread(job.store.keys_of, job.id)
        outcomes: dict[bytes, Any] = {}
        if status == "failed":
            error = BatchError(f"endpoint {endpoint.name!r}: batch {batch_id} failed: {_batch_failure(batch)}",
                               endpoint=endpoint.name, batch_id=batch_id)
            outcomes = dict.fromkeys(keys, error)
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if isinstance(file_id, str) and file_id:
                content = await self._retrying(job, client.content, file_id, len(keys))
                for line in content.splitlines():
                    if line.strip():
                        self._read_line(endpoint, batch_id, line, outcomes, job.calls)
        for key in keys:
            if key not in outcomes:
                outcomes[key] = BatchError(
                    f"endpoint {endpoint.name!r}: batch {batch_id} ended {status} without an answer for this row; "
                    "running the statement again sends it in a new batch", endpoint=endpoint.name, batch_id=batch_id)
        engine = self._engine()
        if engine is None:
            return
        # Rows of the batch this run did not ask for are counted for the endpoint, not for a query.
        any_call = next(iter(job.calls.values()))[0]
        cache = any_call.cache
        tokens = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
        for key, outcome in outcomes.items():
            call, query = job.calls.get(key, (any_call, None))
            usages = engine._usages_for(call, query)
            if isinstance(outcome, _wire.Answer):
                for name in tokens:
                    tokens[name] += outcome.usage.get(name) or 0
                for usage in usages:
                    usage.answer(1, outcome.usage, None, batch=True)
                if cache is not None:
                    cache.put(key, endpoint.name, endpoint.model, outcome)
            elif key in job.calls:
                for usage in usages:
                    usage.fail(1, outcome)
        job.store.update(job.id, collected=1, **{**progress_fields(batch), **tokens})
        engine._answer_keys({key: outcomes[key] for key in job.calls})

    @staticmethod
    def _read_line(endpoint: Endpoint, batch_id: str, line: bytes, outcomes: dict[bytes, Any],
                   calls: dict[bytes, tuple]) -> None:
        try:
            item = orjson.loads(line)
            key = bytes.fromhex(item["custom_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not one of ours: the keys without a line get an error
        response = item.get("response") if isinstance(item.get("response"), dict) else None
        status = response.get("status_code") if response else None
        body = orjson.dumps(response.get("body")) if response else b""
        if status is not None and 200 <= status < 300:
            try:
                if endpoint.task == "embeddings":
                    vectors, usage = _wire.parse_embeddings(body, endpoint.name, 1)
                    answer = _wire.Answer(vectors[0], usage)
                else:
                    parse = _wire.parse_chat if endpoint.task == "chat" else _wire.parse_completions
                    call = calls.get(key)
                    answer = parse(body, endpoint.name, call[0].body if call is not None else {})
                answer.batch_id = batch_id
                outcomes[key] = answer
            except AIQueryError as exc:
                outcomes[key] = exc
            return
        error = item.get("error") if isinstance(item.get("error"), dict) else {}
        message = _wire.error_text(body) if response else shorten(str(error.get("message") or error.get("code") or
                                                                       "no reason"))
        code = f" ({error['code']})" if error.get("code") else ""
        outcomes[key] = HTTPStatusError(
            f"endpoint {endpoint.name!r}: batch {batch_id}: HTTP {status} for this row: {message}", endpoint=endpoint.name,
            status=status) if status is not None else BatchError(
            f"endpoint {endpoint.name!r}: batch {batch_id}: no answer for this row{code}: {message}",
            endpoint=endpoint.name, batch_id=batch_id)

    def _still_running(self, job: _Job, row: dict[str, Any], batch: dict[str, Any] | None) -> None:
        status = batch["status"] if batch else row["status"]
        self._fail(job, BatchError(
            f"endpoint {job.endpoint.name!r}: batch {row['batch_id']} is still {status} after "
            f"batch_max_wait = {job.endpoint.batch_max_wait:g} s. It goes on at the provider: run the statement "
            "again later and its answers come from there (`aiquery batches` shows its progress)",
            endpoint=job.endpoint.name, batch_id=row["batch_id"]))

    def _fail(self, job: _Job, exc: AIQueryError) -> None:
        engine = self._engine()
        if engine is None:
            return
        for call, query in job.calls.values():
            for usage in engine._usages_for(call, query):
                usage.fail(1, exc)
        engine._answer_keys(dict.fromkeys(job.calls, exc))

    async def aclose(self) -> None:
        for gathering in self._gathering.values():
            if gathering.timer is not None:
                gathering.timer.cancel()
        self._gathering.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        for store in self._stores.values():
            store.close()
        self._stores.clear()


def batch_cost(row: dict[str, Any], price: Any) -> float | None:
    """A stored batch's cost so far (its tokens at the batch price); None without a price."""
    if price is None:
        return None
    return price.tokens_cost(row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) * price.batch


async def refresh(store: BatchStore, rows: list[dict[str, Any]], endpoints: dict[str, Endpoint],
                  cancel: bool = False) -> list[str]:
    """Asks the provider for the status of `rows` (or cancels them) and records it; returns a
    note for each row that could not be asked (its endpoint gone or moved)."""
    from ._providers import resolve

    notes = []
    try:
        http = httpx_client()
    except Unavailable as exc:
        raise ConfigError(f"the batch API client: {exc}") from None
    async with http:
        for row in rows:
            endpoint = endpoints.get(row["endpoint"])
            target = resolve(endpoint) if endpoint is not None and endpoint.provider == "openai" else None
            base = base_url(target, endpoint.task) if target is not None else ""
            if target is None or endpoint.task != row["task"] or safe_url(base) != row["base_url"]:
                notes.append(f"{row['batch_id']}: endpoint {row['endpoint']!r} no longer points at {row['base_url']}; "
                             "status as last seen")
                continue
            client = BatchClient(endpoint, target, http, base)  # the stored one has its keys redacted
            batch = await (client.cancel if cancel else client.retrieve)(row["batch_id"])
            store.update(row["id"], **progress_fields(batch))
    return notes
