"""The persistent response cache: a query run again, or resumed after an interrupt, pays only once.

One SQLite file (WAL mode: readers never block the writer, and several processes may share it).
A row is keyed by a digest of the request: provider, URL, full body (model, parameters, response
format) and, for embeddings, the text. It stores the endpoint's name and model (for `aiquery cache`),
when it was written, how often it was read, and the parsed answer with its usage. Only successful
answers are stored, and never a header: keys cannot reach the file.

Reads happen on the engine's loop in one statement per batch of new requests. Writes go through a
thread of their own that commits every WRITE_INTERVAL, so an answer is on disk a quarter of a
second after it arrived, even if the process is then killed.
"""

from __future__ import annotations

import atexit
import dataclasses
import queue
import sqlite3
import threading
import time
from pathlib import Path

import orjson

from ._datasets import cache_dir
from ._errors import ConfigError
from ._wire import Answer

FILE_NAME = "responses.sqlite3"
WRITE_INTERVAL = 0.25  # seconds between commits while answers arrive (each commit costs ~2 ms of CPU)
_LOOKUP_CHUNK = 500    # keys per SELECT (SQLite's variable limit is far above)
_STOP = ("stop", None)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT,
    created REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    answer BLOB NOT NULL
) WITHOUT ROWID;
"""  # no secondary index: clearing by endpoint or age scans, and every insert stays cheaper


def default_path() -> Path:
    return cache_dir() / FILE_NAME


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; WAL keeps it consistent
    return con


class ResponseCache:
    """Answers by request key, in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._reader = _connect(self.path)
            self._reader.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"response cache {str(self.path)!r} cannot be opened: {exc}. Set AIQUERY_CACHE_DIR "
                              "to a writable directory, or turn the cache off (cache = false)") from None
        self._read_lock = threading.Lock()
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._unwritten = 0
        self._unwritten_answers: dict[bytes, Answer] = {}  # put and not yet committed: found by get_many too
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="aiquery-cache", daemon=True)
        self._writer.start()

    def __repr__(self) -> str:
        return f"<aiquery.ResponseCache {str(self.path)!r}>"

    def get_many(self, keys: list[bytes], count_hits: bool = True) -> dict[bytes, Answer]:
        """The cached answers among `keys` (their hit counts are raised in the background)."""
        found: dict[bytes, Answer] = {}
        if self._closed:
            return found
        if self._unwritten_answers:  # put, but maybe not committed yet
            with self._idle:
                found = {key: dataclasses.replace(self._unwritten_answers[key], attempts=0, cached=True)
                         for key in keys if key in self._unwritten_answers}
            keys = [key for key in keys if key not in found]
        with self._read_lock:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, blob in self._reader.execute(f"SELECT key, answer FROM responses WHERE key IN ({marks})",
                                                      chunk):
                    stored = orjson.loads(blob)
                    found[key] = Answer(stored["value"], stored["usage"], stored["finish_reason"], 0, True)
        if found and count_hits:
            self._submit(("hit", list(found)))
        return found

    def put(self, key: bytes, endpoint: str, model: str | None, answer: Answer) -> None:
        if self._closed:
            return
        blob = orjson.dumps({"value": answer.value, "usage": answer.usage, "finish_reason": answer.finish_reason})
        self._submit(("put", (key, endpoint, model, time.time(), blob)), key, answer)

    def _submit(self, item: tuple, key: bytes | None = None, answer: Answer | None = None) -> None:
        if self._closed:
            return
        with self._idle:
            self._unwritten += 1
            if key is not None:
                self._unwritten_answers[key] = answer
        self._pending.put(item)

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until everything put so far is committed; False if that took longer than `timeout`."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unwritten:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Writes what is pending, then closes the file; later lookups find nothing and puts are dropped."""
        if self._closed:
            return
        self._closed = True
        self._pending.put(_STOP)
        self._writer.join(timeout=10)
        with self._read_lock:
            self._reader.close()

    def _write_loop(self) -> None:
        con = _connect(self.path)
        stop = False
        while not stop:
            items = [self._pending.get()]
            time.sleep(WRITE_INTERVAL)  # gather what arrives meanwhile into one transaction
            while True:
                try:
                    items.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in items
            items = [item for item in items if item is not _STOP]
            rows = [payload for kind, payload in items if kind == "put"]
            hits = [(key,) for kind, keys in items if kind == "hit" for key in keys]
            try:
                with con:  # one transaction; another process writing waits up to the timeout
                    con.execute("BEGIN IMMEDIATE")
                    con.executemany("INSERT OR IGNORE INTO responses (key, endpoint, model, created, answer) "
                                    "VALUES (?, ?, ?, ?, ?)", rows)
                    con.executemany("UPDATE responses SET hits = hits + 1 WHERE key = ?", hits)
            except sqlite3.Error:
                pass  # a cache that cannot be written costs repeats, never answers
            with self._idle:
                for key, *_ in rows:
                    self._unwritten_answers.pop(key, None)
                self._unwritten -= len(items)
                self._idle.notify_all()
        con.close()

    # -- `aiquery cache` --------------------------------------------------------------------
    def summary(self) -> list[tuple[str, str | None, int, int, int]]:
        """Per endpoint and model: entries, bytes of answers, hits."""
        self.flush()
        with self._read_lock:
            return self._reader.execute(
                "SELECT endpoint, model, count(*), sum(length(answer)), sum(hits) FROM responses "
                "GROUP BY endpoint, model ORDER BY endpoint, model").fetchall()

    def clear(self, endpoint: str | None = None, older_than: float | None = None) -> int:
        """Deletes entries (of one endpoint, or older than `older_than` seconds); returns how many."""
        self.flush()
        where, args = [], []
        if endpoint is not None:
            where.append("endpoint = ?")
            args.append(endpoint)
        if older_than is not None:
            where.append("created < ?")
            args.append(time.time() - older_than)
        sql = "DELETE FROM responses" + (" WHERE " + " AND ".join(where) if where else "")
        with self._read_lock:
            deleted = self._reader.execute(sql, args).rowcount
            self._reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if endpoint is None and older_than is None:
                self._reader.execute("VACUUM")
        return deleted


_opened: dict[Path, ResponseCache] = {}
_opened_lock = threading.Lock()


def open_cache(path: str | Path | None = None) -> ResponseCache:
    """The process's one ResponseCache for `path` (default: the user cache directory)."""
    resolved = Path(path).expanduser().resolve() if path is not None else default_path().resolve()
    with _opened_lock:
        cache = _opened.get(resolved)
        if cache is None or cache._closed:
            cache = _opened[resolved] = ResponseCache(resolved)
        return cache


def close_all() -> None:
    """Closes every cache this process opened (they reopen when used again)."""
    with _opened_lock:
        caches = list(_opened.values())
        _opened.clear()
    for cache in caches:
        cache.close()


atexit.register(close_all)  # the writer is a daemon thread: commit what is pending before the process ends

