"""One running query as the engine and the read-ahead see it: its answers so far (the memo), the
rows read ahead and taken, how far DuckDB is, and the events that pause or end it.

The read-ahead (aiquery/_readahead.py) and DuckDB's batches meet here: the read-ahead uses DuckDB
only while a UDF call of the query is inside it (`duckdb_turn`), and a UDF call does not return
while the read-ahead is inside DuckDB (`leave`)."""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._usage import Usage

MEMO_SIZE = 50_000   # answers a query remembers for repeats of the same request


@dataclass
class Query:
    """One running query (identified by DuckDB's transaction id and text): its memo and prefetch holds."""

    identity: tuple
    window: int  # rows the prefetcher may hold that no batch has taken yet
    number: int = 0  # the engine's count of queries, shown in aiquery_query_usage()
    started: float = field(default_factory=time.time)
    finished: float | None = None
    usage: dict[tuple[str, str | None], Usage] = field(default_factory=dict)  # by endpoint name and model
    memo: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    # Rows are matched one to one between the prefetcher and DuckDB's batches: a row the
    # prefetcher registered first is in `holds` until a batch takes it; a row a batch took first
    # is in `taken`, so the prefetcher skips it when it gets there.
    holds: collections.Counter = field(default_factory=collections.Counter)
    taken: collections.Counter = field(default_factory=collections.Counter)
    active: int = 0  # batches in the engine now (loop side)
    last_active: float = field(default_factory=time.monotonic)
    stopped: threading.Event = field(default_factory=threading.Event)  # no more reading ahead
    ended: threading.Event = field(default_factory=threading.Event)    # no more requests at all
    cancelled: threading.Event = field(default_factory=threading.Event)  # Ctrl-C or con.interrupt()
    # Whether DuckDB runs a query on the query's connection or cursor (aiquery._process.Context.running).
    # DuckDB also answers no while a query runs whose progress it cannot measure, so a no while no
    # batch of it is in the engine only *pauses* what was read ahead for it (nothing more is sent
    # until its next batch arrives); the query ends if it stays so for the engine's idle_end.
    running: Callable[[], bool] | None = None
    progress: Callable[[], float] | None = None  # DuckDB's estimate of how far the query is, 0 to 1 (or None)
    source_rows: int | None = None  # rows of the table it scans, when it is not read ahead (aiquery/_planner.py)
    rows_seen: int = 0      # rows DuckDB has handed to ai_query so far
    rows_done: int = 0      # rows whose answer (or error) DuckDB has got back
    deduplicated: int = 0   # of them, rows whose request was a repeat of another row's in this query
    paused: bool = False
    seen_running: bool = False  # DuckDB's progress has shown it running at least once
    parked: list = field(default_factory=list)  # (runtime, work) read ahead and not sent while paused
    # The prefetcher touches DuckDB only while a UDF call of this query runs, and a UDF call does
    # not return while the prefetcher is inside DuckDB: the query cannot end (and the user cannot
    # close the connection) while a cursor of it is busy.
    gate: threading.Condition = field(default_factory=threading.Condition)
    udf_calls: int = 0
    prefetch_busy: bool = False
    prefetcher: threading.Thread | None = None
    may_read_ahead: bool = False  # a prefetcher runs or is being planned: batches record what they took
    read_ahead: str = "no: it came back after it had gone quiet"  # or "yes", or "no: <why>"
    room: threading.Condition = field(default_factory=threading.Condition)
    held_rows: int = 0  # window slots in use

    def reserve(self, n: int) -> bool:
        """Waits until `n` more rows fit in the window (all of it, if n is larger); False once stopped."""
        with self.room:
            while self.held_rows + n > max(self.window, n) and not self.stopped.is_set():
                self.room.wait(0.1)
            if self.stopped.is_set():
                return False
            self.held_rows += n
            return True

    def free(self, n: int = 1) -> None:
        with self.room:
            self.held_rows -= n
            self.room.notify_all()

    def enter(self) -> None:
        """A call of ai_query for this query begins (Engine.query does it); leave() when it returns."""
        with self.gate:
            self.udf_calls += 1
            self.gate.notify_all()

    def leave(self) -> None:
        """The call returns, once the read-ahead is out of DuckDB (so the query cannot end under it)."""
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

    def remember(self, key: bytes, outcome: Any) -> None:
        self.memo[key] = outcome
        self.memo.move_to_end(key)
        if len(self.memo) > MEMO_SIZE:
            self.memo.popitem(last=False)
