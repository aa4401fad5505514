"""Reading ahead of DuckDB, so an endpoint stays busy between batches: the contract.

Why: DuckDB hands ai_query's Python function one batch (at most 2048 rows) at a time and waits for
all of it, and a native table of fewer than 122,880 rows is scanned by one thread. Waiting for each
batch's slowest request leaves most of an endpoint's slots idle (measured: 0.45 to 0.67 of the
ideal with heavy-tailed latency).

How: at a query's first batch, aiquery/_planner.py plans a second query that yields the arguments
of the calls the query will make (a call that runs for some rows only, for those rows). A
Prefetcher thread streams it on a cursor of its own and starts those requests through the engine,
at most the endpoint's `lookahead` rows ahead of what DuckDB has taken (Query.reserve / free). Each
row the prefetcher holds is matched to one row a batch takes, whichever comes first (Query.holds /
taken, aiquery/_engine.py), so DuckDB's batches find their answers in flight or done.

What it promises:
* Exact: it starts only requests the query itself makes, byte for byte (the read-ahead cursor packs
  arguments with the macros ai_query uses: aiquery/sql/readahead*.sql). It never changes results:
  DuckDB's batches still compute every answer's row; a request read ahead is only started earlier.
* Out of DuckDB's way: every use of DuckDB happens while a batch of the query is inside ai_query
  (Query.duckdb_turn), so the query cannot end, nor its connection close, while the cursor is busy.
* Stops with the query: when the query ends for any reason nothing more is started for it
  (Engine.end_query, the engine's watch of DuckDB's progress), and an interrupt never waits for it.
* Reads a source again only where that is harmless: tables, views, files, and Python data frames
  / Arrow tables (iterators and readers, which a second scan would consume, are not read ahead).
  A TEMP table, which only its own connection sees, is copied when con.execute() is handed the
  statement (before it runs; at most MAX_SNAPSHOT_ROWS rows) and the copy is read ahead: it holds
  what the statement reads, because a temp table changes only through its connection. (con.sql()
  cannot be watched so: DuckDB finds Python variables in the frame that calls it.)

What it refuses is the planner's (aiquery/_planner.py), each refusal with its reason in words,
shown by aiquery.explain(con, sql) and `aiquery explain` before a query runs, and by the
`read_ahead` column of aiquery_query_usage() after. It is an optimisation: a refused statement
runs batch by batch, with the same results and the same requests.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

from . import _process
from ._errors import AIQueryError
from ._planner import Plan, plan
from ._sqltypes import sql_identifier

log = logging.getLogger("aiquery")
BATCH_ROWS = 1024  # rows per read of the read-ahead query
MAX_PREBUILT = 100_000  # calls built ahead that DuckDB's batches have not taken yet (a bound on memory)
MAX_PLANS = 256  # statements whose plans are kept
WATCHED_BATCHES = 2  # DuckDB batches without a call on rejected rows: DuckDB filters those out first
MAX_WATCHED = 100_000  # keys kept while undecided
MAX_SNAPSHOT_ROWS = 200_000  # a TEMP table larger than this is not copied for reading ahead (memory)
_CALLS_A_MODEL = re.compile(r"(?i)\bai_")


def snapshot_temp_tables(connection: duckdb.DuckDBPyConnection, statement: str, limit: str = "") -> dict[str, pa.Table]:
    """Copies of the TEMP tables `statement` names, if it calls ai_ functions, for the read-ahead
    cursor (which cannot see them); the connection is idle (its user is about to run `statement`).
    `limit` " LIMIT 0" copies only their columns (for explain)."""
    if not _CALLS_A_MODEL.search(statement):
        return {}
    try:
        found = connection.sql("SELECT table_name, estimated_size FROM duckdb_tables() WHERE temporary "
                               "AND regexp_matches(?, '(?i)\\b' || regexp_escape(table_name) || '\\b')",
                               params=[statement]).fetchall()
        return {name: connection.sql(f"SELECT * FROM temp.main.{sql_identifier(name)}{limit}").to_arrow_table()
                for name, rows in found if rows <= MAX_SNAPSHOT_ROWS}
    except duckdb.Error:  # e.g. a transaction DuckDB aborted: the statement itself will say so
        return {}


def _packed(column) -> list[tuple | None]:
    """(endpoint, request, options, files) per row of a column of packed calls; column by column,
    which is much cheaper than converting the struct rows to dicts."""
    fields = [column.field(name).to_pylist() for name in ("endpoint", "request", "options", "files")]
    valid = column.is_valid().to_pylist()
    return [row if ok else None for row, ok in zip(zip(*fields), valid)]


def _rows(batch, prefix: str = "c") -> list[tuple | None]:
    """The calls of a batch of the read-ahead query, in row order, from its columns named `prefix`...
    (see aiquery/_planner.py). A column holds one packed call per row, or a list of them
    (ai_similarity embeds two texts); __p columns only bind parameters."""
    columns = []
    for name, column in zip(batch.schema.names, batch.columns):
        if not name.startswith(prefix):
            continue
        if pa.types.is_list(column.type):
            calls, offsets = _packed(column.flatten()), column.offsets.to_pylist()
            valid = column.is_valid().to_pylist()
            columns.append([calls[offsets[i]:offsets[i + 1]] if valid[i] else [] for i in range(len(column))])
        else:
            columns.append([[call] for call in _packed(column)])
    return [call for per_row in zip(*columns) for calls in per_row for call in calls]


class Prefetcher(threading.Thread):
    """Streams a plan's rows on its own cursor and hands their calls to the engine.

    `turn()` is Query.duckdb_turn: every use of DuckDB happens inside it. `hold` blocks while the
    look-ahead window is full and answers False once the query has ended."""

    def __init__(self, plan: Plan, open_cursor: Callable[[], duckdb.DuckDBPyConnection],
                 to_calls: Callable[[list[tuple | None]], list], hold: Callable[[list], bool], turn: Callable):
        super().__init__(name="aiquery-prefetch", daemon=True)
        self._plan, self._open_cursor, self._to_calls, self._hold, self._turn = plan, open_cursor, to_calls, hold, turn
        # Whether DuckDB evaluates a WHERE site on the rows its other conditions reject (the plan's
        # r... columns): None until DuckDB's batches show it; meanwhile those calls are not sent.
        self.evaluates_rejected: bool | None = None if plan.maybe else False
        self._rejected: set[bytes] = set()  # keys of such calls read so far, while undecided
        self._watched = 0                   # DuckDB batches seen since then
        self.calls_read = 0                 # calls the query surely makes, read so far
        self.rejected_read = 0              # calls of WHERE sites on rows their other conditions reject
        self.complete = False               # the read-ahead query has been read to its end
        self._cursor: duckdb.DuckDBPyConnection | None = None

    def fraction(self) -> float | None:
        """How far the read-ahead query is through its sources, DuckDB's estimate (0 to 1), if known."""
        cursor = self._cursor
        try:
            value = cursor.query_progress() if cursor is not None else -1
        except duckdb.Error:
            return None
        return value / 100 if value > 0 else None

    def total(self) -> tuple[int | None, bool]:
        """The calls the query will make and whether that is an estimate; (None, False) if unknown."""
        read = self.calls_read + (self.rejected_read if self.evaluates_rejected else 0)
        if self.complete:
            exact = all(site.read_ahead for site in self._plan.sites) and self.evaluates_rejected is not None
            return read, not exact
        fraction = self.fraction()
        # DuckDB's scan runs ahead of the rows handed over: at 100% (a small table, read in one go)
        # most of them may still be unread, and read / fraction would be far too low.
        if fraction and fraction < 1 and read:
            return max(read, round(read / fraction)), True
        return None, False

    def observe(self, keys: list[bytes]) -> None:
        """Learns from a batch DuckDB hands ai_query whether it evaluates the r... calls too."""
        if self.evaluates_rejected is not None or not self._rejected:
            return
        if any(key in self._rejected for key in keys):
            self.evaluates_rejected = True
        else:
            self._watched += 1
            if self._watched >= WATCHED_BATCHES:
                self.evaluates_rejected = False
        if self.evaluates_rejected is not None:
            self._rejected = set()

    def _calls(self, batch) -> list:
        calls = self._to_calls(_rows(batch))
        self.calls_read += len(calls)
        if self.evaluates_rejected is False:
            return calls
        rejected = self._to_calls(_rows(batch, "r"))
        self.rejected_read += len(rejected)
        if self.evaluates_rejected:
            return calls + rejected
        if len(self._rejected) < MAX_WATCHED:
            self._rejected.update(call.key for call in rejected)
        return calls

    def run(self) -> None:
        cursor = reader = None
        try:
            while True:
                with self._turn() as ok:
                    if not ok:
                        return  # the query ended; the connection closes its cursors itself
                    if cursor is None:
                        cursor = self._cursor = self._open_cursor()
                        for name, value in self._plan.objects.items():
                            cursor.register(name, value)
                        reader = cursor.sql(self._plan.sql, params=self._plan.parameters).to_arrow_reader(BATCH_ROWS)
                    batch = reader.read_next_batch()
                if not self._hold(self._calls(batch)):
                    return
        except StopIteration:
            self.complete = True
            with self._turn() as ok:
                if ok:
                    self._cursor = None
                    cursor.close()
        except Exception as exc:  # reading ahead is an optimisation: the query still runs without it
            log.debug("aiquery: not reading ahead: %s", exc)


class ReadAhead:
    """One connection's reading ahead: plans per statement, the read-ahead cursor, and the calls
    built ahead. The connection is held weakly (it holds this object through its UDF)."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, macros: list[str], sites: frozenset[str],
                 build: Callable[..., tuple]) -> None:
        self._connection = weakref.ref(connection)
        self._cursor_lock = threading.Lock()  # a DuckDB connection object is used by one thread at a time
        self._macros = macros  # the read-ahead cursor's: ai_query packs its arguments (aiquery/sql/readahead*.sql)
        self.sites = sites  # ai_query and the task functions: what the planner reads ahead
        self._build = build  # Registration.build: one row's arguments into (endpoint, options, call)
        self._plans: dict[str, Plan] = {}
        # Calls built ahead, by the row's raw arguments, so DuckDB's batch need not build them again.
        # An entry is the same call whichever query asks; the bound only caps memory.
        self._prebuilt: dict[tuple, Any] = {}

    def _raw_cursor(self) -> duckdb.DuckDBPyConnection:
        connection = self._connection()
        if connection is None:
            raise duckdb.ConnectionException("the connection was closed")
        with self._cursor_lock:
            return _process.raw_cursor(connection)

    def _open_cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = self._raw_cursor()
        _process.track_progress(cursor)  # how far it is gives the query's total rows (aiquery/_progress.py)
        for statement in self._macros:
            cursor.execute(statement)
        return cursor

    def plan(self, statement: str, context: _process.Context | None = None, parameters: Any = None) -> Plan:
        """How reading ahead would go for `statement` run on `context` (see aiquery/_planner.py),
        with `parameters` or else the ones it was last executed with there."""
        snapshots = context.snapshots if context is not None else {}
        cached = None if snapshots else self._plans.get(statement)
        if cached is not None:
            return cached
        registered = {**context.registered, **snapshots} if context is not None else {}
        if context is not None:
            context.snapshots = {}  # a copy serves the statement it was made for, not later runs
        if parameters is None and context is not None:
            parameters = context.parameters_of(statement)
        try:
            cursor = self._raw_cursor()
            try:
                result = plan(statement, cursor, self.sites, registered, parameters)
            finally:
                cursor.close()
        except duckdb.Error as exc:
            result = Plan(refusal=f"it could not be planned ({exc})")
        # Objects and parameters are looked up again each time: the names may mean new data.
        if len(self._plans) < MAX_PLANS and not result.objects and result.parameters is None:
            self._plans[statement] = result
        return result

    def calls(self, rows: list[tuple | None]) -> list:
        """Calls for rows of a plan, each (endpoint, request, options, files) as the macros produce
        them; rows that would fail are left for the real query, which reports them."""
        calls = []
        if len(self._prebuilt) > MAX_PREBUILT:
            self._prebuilt.clear()
        for raw in rows:
            if raw is None or raw[1] is None:
                continue
            try:
                call = self._build(*raw)[2]
            except AIQueryError:
                continue
            self._prebuilt[raw] = call
            calls.append(call)
        return calls

    def take(self, raw: tuple) -> Any:
        """The call built ahead for a row's raw arguments (taken once), or None."""
        return self._prebuilt.pop(raw, None)

    def start(self, query: Any, statement: str, context: _process.Context | None, engine: Any) -> None:
        """Plans `statement` and, if it can be read ahead, starts a Prefetcher for `query`."""
        planned = self.plan(statement, context)
        query.read_ahead = "yes" if planned.reads_ahead else f"no: {planned.refusal}"
        query.source_rows = planned.source_rows
        if not planned.reads_ahead:
            query.may_read_ahead = False
            return
        query.prefetcher = Prefetcher(planned, self._open_cursor, self.calls,
                                      lambda calls: engine.hold(calls, query), query.duckdb_turn)
        query.prefetcher.start()


def explain(con: duckdb.DuckDBPyConnection, sql: str, parameters: list | dict | None = None) -> list[Plan]:
    """For each statement of `sql`, whether aiquery reads it ahead on `con` and how each call of
    ai_query or a task function is sent (str() of a plan says it in words). Runs no model and changes
    nothing. `parameters`: the values the statement will be executed with, if it has any. It answers
    for con.execute(), which also reads ahead of TEMP tables (con.sql() does not)."""
    from ._process import context_of
    from ._registration import registration_of

    registration, context = registration_of(con), context_of(con)
    plans = []
    for statement in duckdb.extract_statements(sql):
        if context is not None:  # what a TEMP table's copy would look like, without copying its rows
            context.snapshots = snapshot_temp_tables(con, statement.query, " LIMIT 0")
        plans.append(registration.readahead.plan(statement.query, context, parameters))
    return plans
