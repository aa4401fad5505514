"""Stopping a query at once: Ctrl-C and `con.interrupt()` cancel its requests in flight.

DuckDB stops a query between calls of a function, so on its own it waits until the current
ai_query batch (up to 2048 rows of requests) is answered. The batch's call cannot see DuckDB's
interrupt flag, so aiquery hooks the two ways a query is interrupted:

* SIGINT (Ctrl-C in a terminal, "interrupt kernel" in Jupyter): a handler that cancels every
  running aiquery query of the process, then hands the signal to the handler it replaced (which
  raises KeyboardInterrupt as usual). Installed from the main thread only, and only over Python's
  default handler or a handler of someone else that it then calls, never over SIG_IGN / SIG_DFL.
* `DuckDBPyConnection.interrupt()`: wrapped once so that it also cancels the queries of that
  connection (and of nothing else) before DuckDB's own interrupt.

A cancelled batch returns within a fraction of a second: its waiting requests are dropped, the ones
in flight are cancelled, and answers already received stay in the response cache for a re-run.
"""

from __future__ import annotations

import signal
import threading
import weakref
from typing import Any

import duckdb

_engines: weakref.WeakSet = weakref.WeakSet()
_connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> {(engine, token)}
_lock = threading.Lock()
_original_interrupt = duckdb.DuckDBPyConnection.interrupt


def track_engine(engine: Any) -> None:
    _engines.add(engine)


def watch(connection: duckdb.DuckDBPyConnection, engine: Any, token: int) -> None:
    """Makes `connection.interrupt()` and Ctrl-C cancel the queries of this registration."""
    with _lock:
        _connections.setdefault(connection, set()).add((weakref.ref(engine), token))
    _wrap_interrupt()
    _install_sigint_handler()


def cancel_connection(connection: duckdb.DuckDBPyConnection) -> None:
    with _lock:
        registrations = list(_connections.get(connection, ()))
    for engine_ref, token in registrations:
        engine = engine_ref()
        if engine is not None:
            engine.cancel(lambda identity, token=token: identity[0] == token)


def _interrupt(self: duckdb.DuckDBPyConnection) -> None:
    cancel_connection(self)
    _original_interrupt(self)


def _wrap_interrupt() -> None:
    if duckdb.DuckDBPyConnection.interrupt is not _interrupt:
        _interrupt.__doc__ = _original_interrupt.__doc__
        duckdb.DuckDBPyConnection.interrupt = _interrupt


class _SigintHandler:
    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: Any) -> Any:
        for engine in list(_engines):
            engine.cancel(lambda identity: True)
        return self.previous(signum, frame)


def _install_sigint_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal() works on the main thread only; a later registration there installs it
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, _SigintHandler) or not callable(current):
        return  # already ours, or SIG_IGN / SIG_DFL / set from C: the user chose, leave it
    signal.signal(signal.SIGINT, _SigintHandler(current))
