"""Everything aiquery installs in the Python process, and the process-wide state it keeps.

Installed once, by the first registration (aiquery.connect / aiquery.register):

* `DuckDBPyConnection.cursor` is wrapped: a cursor of an aiquery connection is a context of its
  own. It gets the aiquery macros (TEMP macros belong to the connection or cursor they were made
  on, while Python functions are shared by every connection of a database), DuckDB's progress
  tracking is turned on for it (see `Context.running`), and its queries are told apart from its
  connection's.
* `DuckDBPyConnection.interrupt` is wrapped: it also cancels the requests of the queries running
  on that connection or cursor, at once; DuckDB's own interrupt waits for the running batch.
* `execute`, `register` and `unregister` are wrapped to note, on an aiquery context, the parameter
  values a statement runs with, the Python objects registered by name, and a copy of the TEMP
  tables a statement calling ai_ functions names: reading ahead runs a second query over the same
  data on another cursor, which sees none of them (aiquery/_planner.py, aiquery/_readahead.py
  `snapshot_temp_tables`). `sql` is left alone: DuckDB finds the Python variables a statement
  names in the frame that calls it, and a wrapper would be that frame.
  When `execute` returns with nothing left to fetch, the statement's queries end there and then
  (otherwise the engine's watch of DuckDB's progress ends them).
* A SIGINT handler (Ctrl-C in a terminal, "interrupt kernel" in Jupyter) cancels every running
  aiquery query of the process, then hands the signal to the handler it replaced (which raises
  KeyboardInterrupt as usual). Installed from the main thread only, and only over Python's default
  handler or someone else's handler that it then calls, never over SIG_IGN / SIG_DFL.
* A filter on the `httpx` logger (the batch API client and HttpxTransport use httpx): the URLs it
  logs at INFO ("HTTP Request: POST ...") have credentials in their query or userinfo redacted
  (aiquery/_scrub.py `safe_url`), as a base_url may carry a gateway's `?key=...`.

State, all of it held weakly so that nothing here keeps a connection or an engine alive:

* `contexts`: each connection or cursor with aiquery functions -> its Context (and `by_number`).
* `engines`: the engines of the process, for the SIGINT handler.
* `numbers`: unique in the process. A context's number is written into its macros, so each batch
  names the context its query runs on; a registration's number is in its Python functions' names,
  because two connections to one database file share that file's catalog of Python functions.
* `shared_engine()`: the engine every connection uses unless given one (`Engine.shared()`), so an
  endpoint's limits hold across the process. Forgotten in a forked child, whose copy has no loop thread.
* `caches`: the open response caches, one per file (aiquery/_cache.py `open_cache`), closed at exit.
* `spark_connections`: in a Spark worker, the DuckDB connection kept for each job's settings
  (aiquery/spark.py): Spark reuses its Python workers.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import duckdb
import httpx

from ._scrub import safe_url

# DuckDB reports a query's progress only while its progress bar is enabled; printing it is turned
# off because aiquery shows its own line (aiquery/_progress.py), and progress_bar_time = 0 has
# DuckDB track a query from its start rather than after 2 s.
PROGRESS_SETTINGS = ("SET enable_progress_bar_print = false", "SET enable_progress_bar = true",
                     "SET progress_bar_time = 0")

contexts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection or cursor -> Context
by_number: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # Context.number -> Context
engines: weakref.WeakSet = weakref.WeakSet()
numbers = itertools.count(1)
_lock = threading.Lock()
_engine: list = []  # the shared engine, once made
caches: dict = {}  # resolved path -> ResponseCache
caches_lock = threading.Lock()
spark_connections: dict[str, Any] = {}  # in a Spark worker: settings JSON -> its DuckDB connection
_original = {name: getattr(duckdb.DuckDBPyConnection, name)
             for name in ("cursor", "interrupt", "execute", "register", "unregister")}
_original_cursor = _original["cursor"]


class Context:
    """A connection or cursor with aiquery functions: the registration it uses and its number."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, registration: Any) -> None:
        self.registration = registration
        self.number = next(numbers)
        self._connection = weakref.ref(connection)
        # Transactions of this database numbered below this one began before the last interrupt():
        # a query of one of them reaching its first ai_query batch only now is cancelled at once.
        self.interrupted_before: int | None = None
        self.registered: dict[str, Any] = {}  # con.register(name, object) here
        self.parameters: tuple[str, Any] | None = None  # the last statement executed with parameters, and them
        self.snapshots: dict[str, Any] = {}  # TEMP tables the last statement names, copied (used once)
        # Without DuckDB's progress, a query here ends when it has gone idle (Engine idle_end).
        self.tracked = track_progress(connection)
        for statement in registration.macros(self.number):
            connection.execute(statement)

    def fraction(self) -> float | None:
        """DuckDB's estimate of how far the query running here is (0 to 1), if it has one."""
        connection = self._connection()
        try:
            value = connection.query_progress() if connection is not None else -1
        except duckdb.Error:
            return None
        return value / 100 if value >= 0 else None

    def running(self) -> bool:
        """Whether DuckDB runs a query on this context now (or holds a result it has not finished
        handing over). Safe from any thread: it reads DuckDB's progress figure, it runs no query."""
        connection = self._connection()
        if connection is None:
            return False
        try:
            return connection.query_progress() >= 0
        except duckdb.Error:  # closed
            return False

    def interrupt(self) -> None:
        """Cancels the queries running here, including one that has not reached the engine yet."""
        connection = self._connection()
        if connection is not None:
            try:
                cursor = _original_cursor(connection)
                try:  # transaction numbers only grow: this one is above every query begun so far
                    self.interrupted_before = cursor.execute("SELECT txid_current()").fetchone()[0]
                finally:
                    cursor.close()
            except duckdb.Error:
                pass  # closed: nothing runs here
        self.registration.engine.cancel(lambda identity: identity[0] == self.number)

    def parameters_of(self, statement: str) -> Any:
        """The parameter values `statement` was last executed with here, if it was."""
        if self.parameters is not None and self.parameters[0] == statement:
            return self.parameters[1]
        return None

    def finished(self) -> None:
        """Ends the queries of this context now, at the end of their statement."""
        self.registration.engine.finish(lambda identity: identity[0] == self.number)

    def interrupted(self, txid: int) -> bool:
        """Whether the query of transaction `txid` began before the last interrupt() here."""
        return self.interrupted_before is not None and txid < self.interrupted_before


def track_progress(connection: duckdb.DuckDBPyConnection) -> bool:
    """Turns on DuckDB's progress figure for `connection` (see PROGRESS_SETTINGS); False where DuckDB
    refuses: in Jupyter without ipywidgets it refuses every progress setting of a connection."""
    try:
        for statement in PROGRESS_SETTINGS:
            connection.execute(statement)
    except duckdb.Error:
        return False
    return True


def attach(connection: duckdb.DuckDBPyConnection, registration: Any) -> Context:
    """Makes `connection` an aiquery context of `registration` (replacing an earlier one)."""
    context = Context(connection, registration)
    with _lock:
        contexts[connection] = context
        by_number[context.number] = context
        engines.add(registration.engine)
    _install()
    return context


def context_of(connection: duckdb.DuckDBPyConnection) -> Context | None:
    return contexts.get(connection)


def context_by_number(number: int) -> Context | None:
    return by_number.get(number)


def raw_cursor(connection: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A plain DuckDB cursor, without the aiquery macros: for aiquery's own planning and reading ahead."""
    return _original_cursor(connection)


def _cursor(self: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    cursor = _original_cursor(self)
    context = contexts.get(self)
    if context is not None:
        attach(cursor, context.registration)
    return cursor


def _interrupt(self: duckdb.DuckDBPyConnection) -> None:
    _original["interrupt"](self)  # first, so that DuckDB stops at once; a batch it started is cancelled next
    context = contexts.get(self)
    if context is not None:
        context.interrupt()


def note_statement(connection: duckdb.DuckDBPyConnection, query: object) -> None:
    """Before `query` runs on `connection`: copies of the TEMP tables it names, for reading ahead.
    con.execute() does it itself; aiquery calls it before its own con.sql() calls."""
    context = contexts.get(connection)
    if context is None:
        return
    context.snapshots = {}
    if isinstance(query, str):
        from ._readahead import snapshot_temp_tables
        context.snapshots = snapshot_temp_tables(connection, query)


_CALL = compile("__aiquery_call[0](*__aiquery_call[1])", "<aiquery wrapper>", "eval")


def _from_callers_frame(function: Callable, *args: Any) -> Any:
    """function(*args) run from a frame that sees the variables of the code that called the wrapper.
    DuckDB finds the Python objects a statement names (a DataFrame in a local or global variable,
    its replacement scan) in the frame that calls execute(): without this, the wrapper's own."""
    try:
        caller = sys._getframe(2)
    except ValueError:  # called from C with no Python code above: no variables to see
        return function(*args)
    locals_ = caller.f_locals
    names = {} if locals_ is caller.f_globals else dict(locals_)  # a module's (a notebook's) are its globals
    names["__aiquery_call"] = (function, args)
    return eval(_CALL, caller.f_globals, names)


def _execute(self: duckdb.DuckDBPyConnection, query: object, parameters: object | None = None):
    context = contexts.get(self)
    if context is None:
        return _from_callers_frame(_original["execute"], self, query, parameters)
    context.parameters = (query, parameters) if parameters is not None and isinstance(query, str) else None
    note_statement(self, query)
    try:
        return _from_callers_frame(_original["execute"], self, query, parameters)
    finally:
        if not context.running():  # the statement is over (no result left to fetch): so are its queries
            context.finished()


def _register(self: duckdb.DuckDBPyConnection, view_name: str, python_object: object):
    result = _original["register"](self, view_name, python_object)
    context = contexts.get(self)
    if context is not None:
        context.registered[view_name] = python_object
    return result


def _unregister(self: duckdb.DuckDBPyConnection, view_name: str):
    result = _original["unregister"](self, view_name)
    context = contexts.get(self)
    if context is not None:
        context.registered.pop(view_name, None)
    return result


_WRAPPERS = {"cursor": _cursor, "interrupt": _interrupt, "execute": _execute, "register": _register,
             "unregister": _unregister}


class _SigintHandler:
    def __init__(self, previous: Callable) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: Any) -> Any:
        for engine in list(engines):
            engine.cancel(lambda identity: True)
        return self.previous(signum, frame)


class _RedactedUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(arg, httpx.URL) for arg in record.args):
            record.args = tuple(safe_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args)
        return True


def _install() -> None:
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactedUrls) for f in httpx_log.filters):
        httpx_log.addFilter(_RedactedUrls())
    for name, wrapper in _WRAPPERS.items():
        if getattr(duckdb.DuckDBPyConnection, name) is not wrapper:
            wrapper.__doc__ = _original[name].__doc__
            setattr(duckdb.DuckDBPyConnection, name, wrapper)
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal() works on the main thread only; a later registration there installs it
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, _SigintHandler) or not callable(current):
        return  # already ours, or SIG_IGN / SIG_DFL / set from C: the user chose, leave it
    signal.signal(signal.SIGINT, _SigintHandler(current))


def shared_engine(make: Callable[[], Any]) -> Any:
    """The process-wide engine, made by `make()` on first use."""
    with _lock:
        if not _engine:
            _engine.append(make())  # closed at exit by its finalizer
        return _engine[0]


def _forget_after_fork() -> None:
    _engine.clear()  # its loop thread and HTTP child belong to the parent


os.register_at_fork(after_in_child=_forget_after_fork)
