"""Running SQL text on an aiquery connection: `aiquery.sql()`, the CLI and the shell.

The text is split into statements, translated first when it is written in another dialect
(aiquery/_dialect.py). DuckDB's parser and binder errors for Databricks SQL run untranslated carry a
hint that names the fix and the dialect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb

from . import _process
from ._dialect import dialect_name, translate, with_hint
from ._errors import ArgumentError


def catalogs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The databases attached to `con`: names a three-part Databricks name may keep."""
    return [row[0] for row in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()]


def statements(con: duckdb.DuckDBPyConnection, text: str, dialect: str | None = None) -> list[duckdb.Statement]:
    """The DuckDB statements of `text`, written in `dialect` (None: DuckDB)."""
    translated = dialect_name(dialect) != "duckdb"
    sql = translate(text, dialect, catalogs=catalogs(con)) if translated else text
    try:
        return duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise (exc if translated else with_hint(exc, text)) from None


def run(action: Callable[[str], Any], statement: duckdb.Statement, text: str, dialect: str | None = None) -> Any:
    """action(statement's SQL), a DuckDB error for Databricks SQL in `text` given its hint."""
    try:
        return action(statement.query)
    except duckdb.Error as exc:
        if dialect_name(dialect) != "duckdb":
            raise
        raise with_hint(exc, text) from None


def sql(con: duckdb.DuckDBPyConnection, text: str, *, dialect: str | None = None) -> duckdb.DuckDBPyRelation | None:
    """Runs every statement of `text` on `con` and returns what con.sql() returns for the last: a
    relation for a query (run again each time it is shown or fetched, as in DuckDB), else None.
    `dialect="databricks"` translates Databricks SQL first; without it, the DuckDB errors that
    Databricks SQL causes end with a hint."""
    items = statements(con, text, dialect)
    if not items:
        raise ArgumentError("aiquery.sql: no SQL statement given")
    for statement in items[:-1]:
        run(con.execute, statement, text, dialect)
        con.complete()  # a query's rows are not read, but it runs to its end (ai_query calls included)
    _process.note_statement(con, items[-1].query)
    return run(con.sql, items[-1], text, dialect)
