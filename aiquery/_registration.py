"""Registering aiquery's SQL functions onto a DuckDB connection the caller owns."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import duckdb
from duckdb import sqltypes

from ._config import load_endpoints
from ._engine import Engine
from ._transport import Transport
from ._types import ddl_to_duckdb_sql
from ._udf import UDF_NAME, make_udf


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def macro_statements(embedding_endpoints: list[str]) -> list[str]:
    """The SQL of aiquery/sql/ai_query.sql with its placeholders filled in, one statement each."""
    text = resources.files("aiquery").joinpath("sql/ai_query.sql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    names = "[" + ", ".join(_sql_string(n) for n in sorted(embedding_endpoints)) + "]::VARCHAR[]"
    text = text.replace("$EMBEDDING_ENDPOINTS", names)
    text = re.sub(r"\$DDL\(([^)]*)\)", lambda m: ddl_to_duckdb_sql(m.group(1)), text)
    return [s.strip() for s in text.split(";") if s.strip()]


def register(con: duckdb.DuckDBPyConnection, *, endpoints: Mapping[str, Any] | None = None,
             config: str | os.PathLike | None = None, transport: Transport | None = None
             ) -> duckdb.DuckDBPyConnection:
    """Registers ai_query on `con` (replacing an earlier registration) and returns `con`."""
    if not isinstance(con, duckdb.DuckDBPyConnection):
        raise TypeError(f"register() needs a duckdb connection, got {type(con).__name__}")
    return install(con, Engine(load_endpoints(endpoints, config), transport=transport))


def install(con: duckdb.DuckDBPyConnection, engine: Engine) -> duckdb.DuckDBPyConnection:
    """Binds the SQL functions on `con` to `engine` (register() builds the engine from settings)."""
    try:
        con.remove_function(UDF_NAME)
    except duckdb.InvalidInputException:
        pass  # first registration on this connection
    con.create_function(UDF_NAME, make_udf(engine),
                        [sqltypes.VARCHAR, sqltypes.VARCHAR, sqltypes.VARCHAR, sqltypes.BLOB], sqltypes.VARCHAR,
                        type="arrow", null_handling="special", side_effects=True)
    embedding = [name for name, e in engine.endpoints.items() if e.task == "embeddings"]
    for statement in macro_statements(embedding):
        con.execute(statement)
    return con


def connect(database: str = ":memory:", *, endpoints: Mapping[str, Any] | None = None,
            config: str | os.PathLike | None = None, transport: Transport | None = None,
            **duckdb_options: Any) -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with every aiquery SQL function registered."""
    con = duckdb.connect(database, **duckdb_options)
    try:
        return register(con, endpoints=endpoints, config=config, transport=transport)
    except BaseException:
        con.close()
        raise
