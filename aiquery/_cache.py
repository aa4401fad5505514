"""The persistent response cache: a query run again, or resumed after an interrupt, pays only once.

One SQLite file (WAL mode: readers never block the writer, and several processes may share it).
A row is keyed by a digest of everything that can change an answer: provider, URL (query string
included), the headers sent (routing headers and the API key, which enter only as part of that
digest), the full body (model, parameters, response format) and, for embeddings, the text. It
stores the endpoint's name and model (for `aiquery cache`), when it was written, how often it was
read, and the parsed answer with its usage. Only successful answers are stored; never a header.

Private to its user: directories it creates are 0700 and its files 0600 whatever the umask (SQLite
gives -wal and -shm the main file's mode), files from older versions are tightened, and a file that
belongs to another user is never used, since its answers could have been planted.

Never in a query's way: a file that cannot be opened, is damaged, was written by a newer aiquery or
cannot be written (read-only, disk full) gives one CacheWarning naming the file and what to do, and
queries run without it. Every answer that could not be stored is counted (`cache_not_stored` in
aiquery_usage()). When another process holds the write lock, answers wait in memory (lookups find
them meanwhile) and are written once it lets go; closing waits CLOSE_PATIENCE for it at most.

Reads happen on the engine's loop in one statement per batch of new requests. Writes go through a
thread of their own that commits every WRITE_INTERVAL, so an answer is on disk a quarter of a
second after it arrived, even if the process is then killed.

`rebuild()` (`aiquery cache repair`, and `aiquery cache clear` on a damaged file) makes a new file
from what a read-only connection can still read of the old one, which is never opened the normal way.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import queue
import shlex
import sqlite3
import stat
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import _process
from ._datasets import cache_dir, user_cache_dir
from ._errors import CacheWarning, ConfigError
from ._wire import Answer

FILE_NAME = "responses.sqlite3"
# PRAGMA user_version. 0: aiquery before keys covered headers and the API key; its answers are dropped.
SCHEMA_VERSION = 2
WRITE_INTERVAL = 0.25   # seconds between commits while answers arrive (each commit costs ~2 ms of CPU)
LOCK_WAIT = 0.2         # seconds one commit waits for another process's write lock before trying later
LOCK_WARN_AFTER = 10.0  # seconds of a held lock after which a warning says answers are waiting in memory
CLOSE_PATIENCE = 1.0    # seconds close() (and so exit) still waits for a held lock before giving up
OPEN_WAIT = 2.0         # seconds opening, `aiquery cache` and `clear` wait for another process's lock
MAX_WAITING = 100_000   # answers that may wait for a held lock; beyond, the oldest are given up
_SALVAGE_DEPTH = 12     # repair reads the key space in up to 2**12 slices: damage loses only its slices
_LOOKUP_CHUNK = 500     # keys per SELECT (SQLite's variable limit is far above)
_SQLITE_HEADER = b"SQLite format 3\x00"
_BUSY, _LOCKED, _CORRUPT, _NOTADB = 5, 6, 11, 26  # SQLite's primary result codes
_STOP = ("stop", None, ())
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model TEXT,
    created REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    answer BLOB NOT NULL
) WITHOUT ROWID
"""  # no secondary index: clearing by endpoint or age scans, and every insert stays cheaper
_INSERT = "INSERT OR REPLACE INTO responses (key, endpoint, model, created, answer) VALUES (?, ?, ?, ?, ?)"


def default_path() -> Path:
    return cache_dir() / FILE_NAME


def command(action: str, path: Path) -> str:
    """The `aiquery cache` command line that does `action` to the cache at `path`."""
    where = "" if path == default_path().resolve() else f" --path {shlex.quote(str(path))}"
    return f"aiquery cache {action}{where}"


class _Unusable(Exception):
    """Why a cache file is not used: the warning's text. `rebuildable`: repair or clear can fix it."""

    def __init__(self, message: str, rebuildable: bool = False):
        super().__init__(message)
        self.rebuildable = rebuildable


def _code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; WAL keeps it consistent
    except BaseException:
        con.close()
        raise
    return con


def _decode(blob: bytes) -> Answer | None:
    """A stored answer, or None when it cannot be read back."""
    try:
        stored = orjson.loads(blob)
        return Answer(stored["value"], stored["usage"], stored["finish_reason"], 0, True,
                      logprobs=stored.get("logprobs"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _private_directory(directory: Path) -> None:
    """Creates `directory` (and missing parents) 0700; tightens aiquery's own default directory."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
    directory = missing[0] if missing else directory
    info = directory.stat()
    if directory == user_cache_dir().resolve() and info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.chmod(directory, 0o700)  # made 0755 by aiquery before it kept its cache private


def _private_files(path: Path) -> None:
    """Creates the cache file 0600 if absent; checks that it and its -wal and -shm are the user's own
    regular files, and makes them 0600 (files of older versions were 0644)."""
    for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            info = part.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            raise _Unusable(f"response cache {str(path)!r}: {str(part)!r} is not a file; cache= takes the path of "
                            f"a file (such as {str(part / FILE_NAME)!r})")
        if info.st_uid != os.geteuid():
            raise _Unusable(f"response cache {str(path)!r} belongs to another user (uid {info.st_uid}) and could "
                            "hold answers they planted, so it is not used: set AIQUERY_CACHE_DIR to a directory "
                            "of your own")
        if info.st_mode & 0o077:
            os.chmod(part, 0o600)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _damaged_text(path: Path, exc: BaseException) -> str:
    return (f"response cache {str(path)!r} is damaged ({exc}): queries run without it, neither reading nor storing "
            f"answers. `{command('repair', path)}` keeps the answers it can still read and rebuilds it; "
            f"`{command('clear', path)}` starts it empty")


def _schema_version(con: sqlite3.Connection) -> int:
    return con.execute("PRAGMA user_version").fetchone()[0]


def _upgrade(con: sqlite3.Connection, path: Path) -> int:
    """Brings the file to SCHEMA_VERSION; returns how many answers of an older aiquery it dropped."""
    version = _schema_version(con)
    if version > SCHEMA_VERSION:
        raise _Unusable(f"response cache {str(path)!r} was written by a newer aiquery (schema {version}; this one "
                        f"reads {SCHEMA_VERSION}): queries run without it. Upgrade aiquery, set AIQUERY_CACHE_DIR "
                        f"to another directory, or `{command('repair', path)}` (moves it aside and starts "
                        "an empty cache)", rebuildable=True)
    if version == SCHEMA_VERSION:
        return 0
    con.execute("BEGIN IMMEDIATE")
    try:
        dropped = 0
        if _schema_version(con) < SCHEMA_VERSION:  # another process may have upgraded it meanwhile
            if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'responses'").fetchone():
                dropped = con.execute("SELECT count(*) FROM responses").fetchone()[0]
                con.execute("DROP TABLE responses")
            con.execute(_SCHEMA)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return dropped


def _open_file(path: Path, timeout: float) -> tuple[sqlite3.Connection, int]:
    """A connection to the cache file (created private if absent, upgraded), and how many answers of
    an older aiquery the upgrade dropped."""
    _private_directory(path.parent)
    _private_files(path)
    con = _connect(path, timeout)
    try:
        return con, _upgrade(con, path)
    except BaseException:
        con.close()
        raise


def _file_id(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` now: another process may have rebuilt or deleted it."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


class ResponseCache:
    """Answers by request key, in one SQLite file. `problem` says why the file is not used, if it is not;
    `not_stored` counts the answers it could not store."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.problem: str | None = None
        self.rebuildable = False  # the problem is one `aiquery cache repair` (or clear) fixes
        self.not_stored = 0
        self._warned: set[str] = set()
        self._pid = os.getpid()  # a forked child opens its own (SQLite connections do not survive fork)
        self._read_lock = threading.Lock()
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._unwritten = 0
        self._unwritten_answers: dict[bytes, Answer] = {}  # put and not yet committed: found by get_many too
        self._closed = False
        self._closing = threading.Event()  # set by close(): the writer commits at once
        self._reader: sqlite3.Connection | None = None
        self._writer: threading.Thread | None = None
        self._file: tuple[int, int] | None = None
        try:
            self._reader, dropped = _open_file(self.path, OPEN_WAIT)
            self._file = _file_id(self.path)
        except _Unusable as exc:
            self._stop_using(str(exc), exc.rebuildable)
        except (OSError, sqlite3.Error) as exc:
            self._stop_using(*self._trouble(exc))
        else:
            if dropped:
                self._warn("old", f"response cache {str(self.path)!r}: dropped {dropped:,} "
                                  f"answer{'s' if dropped > 1 else ''} written by an older aiquery, whose keys "
                                  "covered neither the headers nor the API key (they could be another route's or "
                                  "another user's answers)")
            self._writer = threading.Thread(target=self._write_loop, name="aiquery-cache", daemon=True)
            self._writer.start()

    def __repr__(self) -> str:
        return f"<aiquery.ResponseCache {str(self.path)!r}>"

    @property
    def closed(self) -> bool:
        return self._closed

    # -- what went wrong, said once ------------------------------------------------------------
    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, CacheWarning, stacklevel=2)

    def _trouble(self, exc: BaseException) -> tuple[str, bool]:
        """The warning for an error opening or using the file, and whether a rebuild fixes it."""
        if isinstance(exc, sqlite3.Error) and _code(exc) in (_CORRUPT, _NOTADB):
            return _damaged_text(self.path, exc), True
        if isinstance(exc, sqlite3.Error) and _code(exc) in (_BUSY, _LOCKED):
            return (f"response cache {str(self.path)!r}: another process is writing to it and did not let go "
                    f"within {OPEN_WAIT:g} s; try again when it has finished"), False
        return (f"response cache {str(self.path)!r} cannot be opened ({exc}): queries run without it and answers "
                "are not stored. Make it writable, set AIQUERY_CACHE_DIR to a writable directory, or turn the "
                "cache off (cache = false)"), False

    def _stop_using(self, message: str, rebuildable: bool = False) -> None:
        """From now on the file is neither read nor written; says why, once."""
        if self.problem is None:
            self.problem, self.rebuildable = message, rebuildable
        self._warn("problem", message)
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _lost(self, count: int, usages: Sequence[Any]) -> None:
        """Counts answers that will not be stored, here and in the usage figures they belong to."""
        with self._idle:
            self.not_stored += count
            for usage in usages:
                usage.cache_not_stored += count

    # -- lookups and puts ----------------------------------------------------------------------
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
        unreadable = 0
        with self._read_lock:
            try:
                for start in range(0, len(keys) if self._reader is not None else 0, _LOOKUP_CHUNK):
                    chunk = keys[start:start + _LOOKUP_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for key, blob in self._reader.execute(
                            f"SELECT key, answer FROM responses WHERE key IN ({marks})", chunk):
                        answer = _decode(blob)
                        if answer is None:
                            unreadable += 1  # sent again, and the new answer replaces it
                        else:
                            found[key] = answer
                failure = None
            except sqlite3.Error as exc:
                failure = exc
        if failure is not None:
            self._stop_using(*self._trouble(failure))
        if unreadable:
            self._warn("unreadable", f"response cache {str(self.path)!r}: {unreadable:,} stored answers could not "
                                     "be read (damaged); they are asked for again and replaced")
        if found and count_hits:
            self._submit(("hit", list(found), ()))
        return found

    def put(self, key: bytes, endpoint: str, model: str | None, answer: Answer, usages: Sequence[Any] = ()) -> None:
        """Stores `answer` (in the background); `usages` count it if it cannot be stored."""
        stored = {"value": answer.value, "usage": answer.usage, "finish_reason": answer.finish_reason}
        if answer.logprobs is not None:  # asked for by confidence scores (ai_classify, ai_extract)
            stored["logprobs"] = answer.logprobs
        blob = orjson.dumps(stored)
        if not self._submit(("put", (key, endpoint, model, time.time(), blob), usages), key, answer):
            self._lost(1, usages)
            if self.problem is None:
                self._warn("closed", f"response cache {str(self.path)!r} was closed while queries still ran: "
                                     "answers that arrived after that were not stored")

    def _submit(self, item: tuple, key: bytes | None = None, answer: Answer | None = None) -> bool:
        """Queues `item` for the writer; False when there is none (the cache is closed or not usable)."""
        with self._idle:
            if self._closed or self.problem is not None or self._writer is None:
                return False
            self._unwritten += 1
            if key is not None:
                self._unwritten_answers[key] = answer
            self._pending.put(item)
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until everything put so far is committed (or given up); False if that took longer than `timeout`."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unwritten:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Writes what is pending (waiting CLOSE_PATIENCE at most for another process's lock), then closes
        the file; later lookups find nothing, and later puts are counted as not stored."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            if self._writer is not None:
                self._pending.put(_STOP)
                self._closing.set()
        if self._writer is not None:
            self._writer.join(timeout=CLOSE_PATIENCE + WRITE_INTERVAL + LOCK_WAIT + 2)
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- the writer thread ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        try:
            con: sqlite3.Connection | None = _connect(self.path, LOCK_WAIT)
        except sqlite3.Error as exc:
            con = None
            self._stop_using(*self._trouble(exc))
        waiting: dict[bytes, tuple[tuple, Sequence[Any]]] = {}  # key -> (row, usages), oldest first
        stopping_since: float | None = None
        locked_since: float | None = None
        while stopping_since is None or waiting:
            items = [] if waiting or stopping_since is not None else [self._pending.get()]
            # Gather what arrives meanwhile into one transaction; closing commits at once (close() and
            # exit wait for it).
            self._closing.wait(WRITE_INTERVAL)
            while True:
                try:
                    items.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            hits, done = [], 0  # items this round settles whatever happens (hit counts are never retried)
            for kind, payload, usages in items:
                if kind == "stop":
                    stopping_since = time.monotonic()
                    continue
                if kind == "hit":
                    hits.extend((key,) for key in payload)
                else:
                    if payload[0] not in waiting:
                        done -= 1  # settled once committed or given up
                    waiting[payload[0]] = (payload, usages)  # a repeat replaces the one still waiting
                done += 1
            if con is not None and self.problem is None and waiting and _file_id(self.path) != self._file:
                con = self._reopen(con)
            if con is None or self.problem is not None:
                self._give_up(waiting, None)  # the file is not used any more, and the warning said so
            elif waiting or hits:
                failure = self._commit(con, [row for row, _ in waiting.values()], hits)
                if failure is None:
                    self._settle(list(waiting), len(waiting))
                    waiting.clear()
                    locked_since = None
                elif _code(failure) in (_BUSY, _LOCKED):
                    locked_since = locked_since or time.monotonic()
                    self._while_locked(waiting, time.monotonic() - locked_since, stopping_since)
                elif _code(failure) in (_CORRUPT, _NOTADB):
                    self._stop_using(*self._trouble(failure))
                    self._give_up(waiting, None)
                else:  # read-only, disk full, I/O error
                    self._give_up(waiting, f"{failure}; free space or make it writable, or set AIQUERY_CACHE_DIR "
                                           "to another directory")
            self._settle([], done)
        if con is not None:
            con.close()

    def _reopen(self, con: sqlite3.Connection) -> sqlite3.Connection | None:
        """Another process rebuilt (`aiquery cache repair`) or deleted the file: answers go to the one at
        the path now, not to the old one that no one will read again."""
        con.close()
        try:
            con, _ = _open_file(self.path, LOCK_WAIT)
            reader = _connect(self.path, OPEN_WAIT)
        except _Unusable as exc:
            self._stop_using(str(exc), exc.rebuildable)
            return None
        except (OSError, sqlite3.Error) as exc:
            self._stop_using(*self._trouble(exc))
            return None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
            self._reader = reader
        self._file = _file_id(self.path)
        return con

    @staticmethod
    def _commit(con: sqlite3.Connection, rows: list[tuple], hits: list[tuple]) -> sqlite3.Error | None:
        """One transaction; None when committed, else the error (nothing of it was stored)."""
        try:
            con.execute("BEGIN IMMEDIATE")  # another process writing: waits LOCK_WAIT, then SQLITE_BUSY
            try:
                con.executemany(_INSERT, rows)
                con.executemany("UPDATE responses SET hits = hits + 1 WHERE key = ?", hits)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    try:
                        con.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite rolled back by itself (disk full, I/O error)
                raise
        except sqlite3.Error as exc:
            return exc
        return None

    def _settle(self, keys: list[bytes], count: int) -> None:
        """`count` submitted items are done (committed or given up); `keys` no longer wait in memory."""
        with self._idle:
            for key in keys:
                self._unwritten_answers.pop(key, None)
            self._unwritten -= count
            self._idle.notify_all()

    def _give_up(self, answers: dict[bytes, tuple[tuple, Sequence[Any]]], reason: str | None) -> None:
        """`answers` will not be stored: counted where they belong, and said once (unless `reason` is None:
        the warning that the file is not used said it)."""
        if not answers:
            return
        for _, usages in answers.values():
            self._lost(1, usages)
        if reason is not None:
            self._warn("not stored", f"{len(answers):,} answers were not stored in {str(self.path)!r}: {reason}. "
                                     "They are counted in aiquery_usage().cache_not_stored, and asked for again "
                                     "next time")
        self._settle(list(answers), len(answers))
        answers.clear()

    def _while_locked(self, waiting: dict, held: float, stopping_since: float | None) -> None:
        """Another process holds the write lock: the answers wait for the next try, within limits."""
        if stopping_since is not None and time.monotonic() - stopping_since >= CLOSE_PATIENCE:
            self._give_up(waiting, f"another process held its write lock (for {held:.1f} s) until this one closed it")
        elif len(waiting) > MAX_WAITING:
            oldest = {key: waiting.pop(key) for key in list(waiting)[:len(waiting) - MAX_WAITING]}
            self._give_up(oldest, f"another process has held its write lock for {held:.0f} s, and more than "
                                  f"{MAX_WAITING:,} answers were waiting for it")
        elif held >= LOCK_WARN_AFTER:
            self._warn("locked", f"response cache {str(self.path)!r}: another process has held its write lock for "
                                 f"{held:.0f} s; {len(waiting):,} answers wait in memory and are written when it "
                                 "lets go (a crash meanwhile would lose them)")

    # -- `aiquery cache` ---------------------------------------------------------------------
    def _checked_reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise ConfigError(self.problem or f"response cache {str(self.path)!r} is closed")
        return self._reader

    def _fail(self, exc: sqlite3.Error) -> ConfigError:
        message, rebuildable = self._trouble(exc)
        if rebuildable:
            self._stop_using(message, rebuildable)
        return ConfigError(message)

    def summary(self) -> list[tuple[str, str | None, int, int, int]]:
        """Per endpoint and model: entries, bytes of answers, hits."""
        self.flush()
        with self._read_lock:
            reader = self._checked_reader()
            try:
                return reader.execute(
                    "SELECT endpoint, model, count(*), sum(length(answer)), sum(hits) FROM responses "
                    "GROUP BY endpoint, model ORDER BY endpoint, model").fetchall()
            except sqlite3.Error as exc:
                failure = exc
        raise self._fail(failure)

    def clear(self, endpoint: str | None = None, older_than: float | None = None) -> int:
        """Deletes entries (of one endpoint, or older than `older_than` seconds); returns how many.
        The file is checked first: a damaged one raises ConfigError (and `rebuildable` is set)."""
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
            reader = self._checked_reader()
            try:
                verdict = reader.execute("PRAGMA quick_check").fetchone()[0]
                if verdict == "ok":
                    deleted = reader.execute(sql, args).rowcount
                    reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    if endpoint is None and older_than is None:
                        reader.execute("VACUUM")
                    return deleted
            except sqlite3.Error as exc:
                failure = exc
            else:
                failure = None
        if failure is not None:
            raise self._fail(failure)
        problems = [line for line in verdict.splitlines() if not line.startswith("***")]
        self._stop_using(_damaged_text(self.path, f"integrity check: {problems[0] if problems else verdict}"
                                                  + (f", and {len(problems) - 1} more" if len(problems) > 1 else "")),
                         True)
        raise ConfigError(self.problem)


@dataclasses.dataclass
class Rebuilt:
    """What rebuild() did: answers kept, whether part of the old file was unreadable, where it went."""

    kept: int
    complete: bool
    aside: Path | None  # the old file, moved aside rather than deleted


def _salvage(con: sqlite3.Connection) -> tuple[list[tuple], bool]:
    """The rows a (read-only) connection can read, and whether that was all of them. Keys are uniform
    digests, so the key space is read in slices: a damaged page costs only the slices that cross it."""
    rows: list[tuple] = []
    complete = True
    top = 1 << 128  # keys are 16-byte digests: [0, top) as big-endian numbers

    def read(low: int, high: int, depth: int) -> None:
        nonlocal complete
        bounds = (low.to_bytes(16, "big"), high.to_bytes(16, "big") if high < top else b"\xff" * 17)
        try:
            found = con.execute("SELECT key, endpoint, model, created, hits, answer FROM responses "
                                "WHERE key >= ? AND key < ?", bounds).fetchall()
        except sqlite3.DatabaseError:
            if depth == _SALVAGE_DEPTH:
                complete = False
                return
            middle = (low + high) // 2
            read(low, middle, depth + 1)
            read(middle, high, depth + 1)
            return
        for row in found:
            if _decode(row[5]) is None:
                complete = False
            else:
                rows.append(row)

    read(0, top, 0)
    return rows, complete


def rebuild(path: str | Path, keep_answers: bool) -> Rebuilt:
    """A new cache file at `path`, holding (with `keep_answers`) the answers a read-only connection can
    still read from the old one. The old file is moved aside, not deleted, when part of it could not be
    read or it is not a cache this version reads. Run it while no other process uses the file."""
    path = Path(path).expanduser().resolve()
    with _process.caches_lock:
        cache = _process.caches.pop(path, None)
    if cache is not None:
        cache.close()
    _private_directory(path.parent)
    rows: list[tuple] = []
    complete = readable = True  # readable: a cache of this version or an older one, not someone else's file
    if path.exists() and path.stat().st_size > 0:
        complete = readable = False
        with path.open("rb") as f:
            is_sqlite = f.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
        if is_sqlite:
            try:
                old = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
                try:
                    old.execute("PRAGMA writable_schema=ON")  # reads a truncated file (nothing is written: mode=ro)
                    version = _schema_version(old)
                    readable = version <= SCHEMA_VERSION
                    if readable and keep_answers and version == SCHEMA_VERSION:
                        rows, complete = _salvage(old)
                    else:
                        complete = readable  # an older version's answers are useless: nothing is lost
                finally:
                    old.close()
            except sqlite3.DatabaseError:
                complete = False
    fresh = Path(f"{path}.rebuilding")
    fresh.unlink(missing_ok=True)
    Path(f"{fresh}-journal").unlink(missing_ok=True)
    os.close(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    new = sqlite3.connect(fresh, isolation_level=None)
    try:
        new.execute("BEGIN")
        new.execute(_SCHEMA)
        new.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", rows)
        new.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        new.execute("COMMIT")
    finally:
        new.close()
    aside = None
    if path.exists() and not (complete and readable):
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        while aside.exists():
            aside = aside.with_name(aside.name + "+")
        os.replace(path, aside)
        os.chmod(aside, 0o600)
        if Path(f"{path}-wal").exists():
            os.replace(f"{path}-wal", f"{aside}-wal")  # part of its content
    # The old -wal and -shm go before the new file takes the name: SQLite would apply them to it.
    for part in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        part.unlink(missing_ok=True)
    os.replace(fresh, path)
    return Rebuilt(len(rows), complete and readable, aside)


def open_cache(path: str | Path | None = None) -> ResponseCache:
    """The process's one ResponseCache for `path` (default: the user cache directory). One that could not
    use its file is opened again, so a repaired file is used by the next connection."""
    resolved = Path(path).expanduser().resolve() if path is not None else default_path().resolve()
    with _process.caches_lock:
        cache = _process.caches.get(resolved)
        if cache is None or cache.closed or cache.problem is not None or cache._pid != os.getpid():
            if cache is not None and cache._pid == os.getpid():
                cache.close()
            cache = _process.caches[resolved] = ResponseCache(resolved)
        return cache


def close_all() -> None:
    """Closes every cache this process opened (they reopen when used again)."""
    with _process.caches_lock:
        caches = list(_process.caches.values())
        _process.caches.clear()
    for cache in caches:
        cache.close()


atexit.register(close_all)  # the writer is a daemon thread: commit what is pending before the process ends
