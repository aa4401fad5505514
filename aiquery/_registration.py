"""Registering aiquery's SQL functions onto a DuckDB connection the caller owns."""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping
from importlib import resources
from typing import Any

import duckdb
import orjson
from duckdb import sqltypes

from ._cache import open_cache
from ._config import (DEFAULT_CHAT_ENDPOINT, DEFAULT_EMBEDDING_ENDPOINT, load_endpoints, read_allowed_hosts,
                      read_default_endpoints, read_prices)
from ._datasets import dataset_path
from ._engine import Engine
from ._errors import ArgumentError, ConfigError
from ._progress import interactive
from ._types import ddl_to_duckdb_sql, sql_string
from ._udf import Registration, make_udf
from ._usage import endpoint_rows, query_rows

UDF_NAME = "__aiquery_invoke"
DATASET_UDF = "aiquery_dataset"
USAGE_UDF = "__aiquery_usage"
_registrations: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> its Registration
UDF_PARAMETERS = [sqltypes.VARCHAR, sqltypes.VARCHAR, sqltypes.VARCHAR, sqltypes.BLOB, sqltypes.VARCHAR,
                  sqltypes.UBIGINT]


def _statements(*files: str, embedding_endpoints: list[str] = (),
                default_endpoints: Mapping[str, str] | None = None) -> list[str]:
    """The SQL files under aiquery/sql/, placeholders filled in, one statement each."""
    text = "\n".join(resources.files("aiquery").joinpath(f"sql/{name}").read_text() for name in files)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    names = "[" + ", ".join(sql_string(n) for n in sorted(embedding_endpoints)) + "]::VARCHAR[]"
    text = text.replace("$EMBEDDING_ENDPOINTS", names)
    defaults = default_endpoints or {}
    text = text.replace("$DEFAULT_CHAT_ENDPOINT", sql_string(defaults.get("chat", DEFAULT_CHAT_ENDPOINT)))
    text = text.replace("$DEFAULT_EMBEDDING_ENDPOINT",
                        sql_string(defaults.get("embeddings", DEFAULT_EMBEDDING_ENDPOINT)))
    text = re.sub(r"\$DDL\(([^)]*)\)", lambda m: ddl_to_duckdb_sql(m.group(1)), text)
    return [s.strip() for s in text.split(";") if s.strip()]


def register(con: duckdb.DuckDBPyConnection, *, endpoints: Mapping[str, Any] | None = None,
             config: str | os.PathLike | None = None, engine: Engine | None = None,
             cache: str | os.PathLike | bool = True, progress: bool | None = None) -> duckdb.DuckDBPyConnection:
    """Registers ai_query on `con` (replacing an earlier registration) and returns `con`.

    Requests go through `engine`, by default the process-wide Engine.shared(), so an endpoint's
    limits hold across every connection. Answers are kept in the response cache: `cache` is its
    file (default: responses.sqlite3 in $AIQUERY_CACHE_DIR or the user cache directory), or False.
    `progress` shows each query's progress: by default in a terminal or notebook (AIQUERY_PROGRESS=0: never)."""
    if not isinstance(con, duckdb.DuckDBPyConnection):
        raise TypeError(f"register() needs a duckdb connection, got {type(con).__name__}")
    settings = load_endpoints(endpoints, config)
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise TypeError(f"cache must be True, False or the path of a cache file, got {type(cache).__name__}")
    responses = None if cache is False else open_cache(None if cache is True else cache)
    prices = read_prices(config)
    engine = engine or Engine.shared()
    registration = Registration(settings, engine, responses, prices, con, _statements("options.sql", "prefetch.sql"),
                                interactive() if progress is None else progress)
    registration.allowed_hosts = read_allowed_hosts(config)
    registration.default_endpoints = _checked_defaults(read_default_endpoints(config), settings)
    install(con, registration)
    _registrations[con] = registration
    _wrap_cursor()
    return con


_original_cursor = duckdb.DuckDBPyConnection.cursor


def _cursor(self: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of an aiquery connection has the aiquery functions too: DuckDB shares the Python
    UDFs with the cursor, but TEMP macros (ai_query itself) belong to the connection they were made on."""
    cursor = _original_cursor(self)
    registration = _registrations.get(self)
    if registration is not None:
        for statement in macro_statements(registration):
            cursor.execute(statement)
        _registrations[cursor] = registration
    return cursor


def _wrap_cursor() -> None:
    """Wraps DuckDBPyConnection.cursor once, as aiquery._interrupt wraps interrupt()."""
    if duckdb.DuckDBPyConnection.cursor is not _cursor:
        _cursor.__doc__ = _original_cursor.__doc__
        duckdb.DuckDBPyConnection.cursor = _cursor


def _checked_defaults(defaults: dict[str, str], settings: Mapping[str, Any]) -> dict[str, str]:
    """The task functions' default endpoints; one registered with another task is a ConfigError.
    (One not registered at all fails when a function uses it, naming the registered endpoints.)"""
    for task, name in defaults.items():
        endpoint = settings.get(name)
        if endpoint is not None and endpoint.task != task:
            key = "default_chat_endpoint" if task == "chat" else "default_embedding_endpoint"
            raise ConfigError(f"{key} = {name!r} names a {endpoint.task} endpoint; it must be a {task} endpoint")
    return defaults


def registration_of(con: duckdb.DuckDBPyConnection) -> Registration:
    registration = _registrations.get(con)
    if registration is None:
        raise ArgumentError("this connection has no aiquery functions: make it with aiquery.connect() "
                            "or call aiquery.register(con) first")
    return registration


def install(con: duckdb.DuckDBPyConnection, registration: Registration) -> None:
    """Creates the UDFs and macros of `registration` on `con`."""
    engine, prices = registration.engine, registration.prices
    for name in (UDF_NAME, DATASET_UDF, USAGE_UDF):
        try:
            con.remove_function(name)
        except duckdb.InvalidInputException:
            pass  # first registration on this connection
    con.create_function(UDF_NAME, make_udf(registration), UDF_PARAMETERS, sqltypes.VARCHAR,
                        type="arrow", null_handling="special", side_effects=True)
    # Foldable (no side effects) so that it can name a file: read_parquet(aiquery_dataset('...')).
    con.create_function(DATASET_UDF, dataset_path, [sqltypes.VARCHAR], sqltypes.VARCHAR, side_effects=False)

    def usage(kind: str) -> str:
        rows = endpoint_rows(engine, prices) if kind == "endpoints" else query_rows(engine, prices)
        return orjson.dumps(rows).decode()

    con.create_function(USAGE_UDF, usage, [sqltypes.VARCHAR], sqltypes.VARCHAR, side_effects=True)
    for statement in macro_statements(registration):
        con.execute(statement)


def macro_statements(registration: Registration) -> list[str]:
    """The TEMP macros of aiquery's SQL functions (each connection or cursor needs its own)."""
    embedding = [name for name, e in registration.endpoints.items() if e.task == "embeddings"]
    return _statements("options.sql", "ai_query.sql", "usage.sql", "functions.sql", embedding_endpoints=embedding,
                       default_endpoints=getattr(registration, "default_endpoints", None))


def connect(database: str = ":memory:", *, endpoints: Mapping[str, Any] | None = None,
            config: str | os.PathLike | None = None, engine: Engine | None = None,
            cache: str | os.PathLike | bool = True, progress: bool | None = None,
            **duckdb_options: Any) -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with every aiquery SQL function registered (see register())."""
    con = duckdb.connect(database, **duckdb_options)
    try:
        return register(con, endpoints=endpoints, config=config, engine=engine, cache=cache, progress=progress)
    except BaseException:
        con.close()
        raise
