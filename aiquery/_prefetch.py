"""Reading ahead of DuckDB so an endpoint stays busy between batches.

DuckDB hands the ai_query UDF one batch (at most 2048 rows) at a time, and a native table of
fewer than 122,880 rows is scanned by one thread; waiting for each batch's slowest request then
leaves most slots idle (measured: 0.45 of the ideal with heavy-tailed latency). So when a query
starts, the UDF (which receives the statement's text from `current_query()`) asks `plan()` for a
second query that yields the same ai_query arguments in the same order. A Prefetcher thread
streams it on a separate cursor and starts those requests through the engine, at most
`lookahead` rows ahead of what DuckDB has taken. Batches then find their answers in flight.

It is only an optimisation, so `plan()` accepts only queries where every ai_query call surely
runs on every row the second query yields, and refuses the rest (they still run, batch by batch):
- the statement is a SELECT, or a CREATE TABLE AS / INSERT INTO ... SELECT, without LIMIT or SAMPLE;
- every ai_query call is in the select list, not under CASE / AND / OR / COALESCE / IF / a lambda;
- nothing in it is volatile (random(), now(), nextval(), ...), which would change the arguments;
- the FROM clause can be read from another cursor: tables of the database, files, and Python
  data frames / Arrow tables named by a variable (found the way DuckDB's replacement scan finds
  them, in the frames of the thread running the query); not temp tables or views registered on
  the connection (the prefetch query then fails and the query runs batch by batch).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb

log = logging.getLogger("aiquery")

_VOLATILE = {
    "random", "gen_random_uuid", "uuid", "uuidv4", "uuidv7", "now", "current_timestamp", "get_current_timestamp",
    "transaction_timestamp", "current_time", "current_date", "today", "localtime", "localtimestamp",
    "nextval", "currval", "setseed", "txid_current", "current_query",
}
_CONDITIONAL_FUNCTIONS = {"if", "iff", "ifnull", "coalesce", "nullif", "try"}
_CONDITIONAL_CLASSES = {"CASE", "CONJUNCTION", "LAMBDA", "SUBQUERY", "WINDOW"}
_CONDITIONAL_OPERATORS = {"OPERATOR_COALESCE", "OPERATOR_TRY"}
_NAME = r'(?:"(?:[^"]|"")*"|[\w$]+)'
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME})*"
_CTAS = re.compile(rf"(?is)^\s*create\s+(?:or\s+replace\s+)?(?:temp(?:orary)?\s+)?table\s+"
                   rf"(?:if\s+not\s+exists\s+)?{_QUALIFIED}\s+as\s+(.*)$")
_INSERT = re.compile(rf"(?is)^\s*insert\s+(?:or\s+(?:replace|ignore)\s+)?into\s+{_QUALIFIED}"
                     rf"(?:\s*\([^()]*\))?\s+((?:select|with|from|\().*)$")


def _select_part(statement: str) -> str:
    statement = statement.strip().rstrip(";").strip()
    for pattern in (_CTAS, _INSERT):
        match = pattern.match(statement)
        if match:
            return match.group(1)
    return statement


def _is_ai_query(node: Any) -> bool:
    return isinstance(node, dict) and node.get("class") == "FUNCTION" and node.get("function_name") == "ai_query"


def _walk(node: Any):
    """Every dict inside an AST fragment."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _unconditional_calls(expr: Any, found: list, conditional: bool = False) -> None:
    """Appends the ai_query calls in `expr` that run whenever `expr` runs; marks the others None."""
    if isinstance(expr, list):
        for item in expr:
            _unconditional_calls(item, found, conditional)
        return
    if not isinstance(expr, dict):
        return
    if _is_ai_query(expr):
        found.append(None if conditional else expr)
        return
    cls = expr.get("class")
    conditional = conditional or cls in _CONDITIONAL_CLASSES or expr.get("type") in _CONDITIONAL_OPERATORS or (
        cls == "FUNCTION" and expr.get("function_name", "").lower() in _CONDITIONAL_FUNCTIONS)
    for value in expr.values():
        _unconditional_calls(value, found, conditional)


def _innermost(node: dict) -> dict:
    """Descends through plain `SELECT ... FROM (subquery)` wrappers to the node that calls ai_query,
    carrying the wrappers' CTEs down (DuckDB's Python API wraps queries over Python objects so)."""
    while (node.get("type") == "SELECT_NODE" and node["from_table"].get("type") == "SUBQUERY"
           and not any(_is_ai_query(n) for n in _walk(node["select_list"]))
           and node.get("where_clause") is None and node.get("having") is None and node.get("qualify") is None
           and not node.get("group_expressions")
           and all(m["type"] == "ORDER_MODIFIER" for m in node["modifiers"])):
        inner = node["from_table"]["subquery"]["node"]
        inner_names = {entry["key"] for entry in inner["cte_map"]["map"]}
        carried = [entry for entry in node["cte_map"]["map"] if entry["key"] not in inner_names]
        node = dict(inner, cte_map={"map": carried + inner["cte_map"]["map"]})
    return node


def _python_sources(node: dict) -> set[str]:
    """Removes the CTEs DuckDB's Python API adds for Python objects (`name AS (SELECT * FROM
    "__duckdb_source_..")`, bound on the connection only) and returns their names."""
    names, kept = set(), []
    for entry in node["cte_map"]["map"]:
        body = entry["value"]["query_node"]
        source = body.get("from_table", {})
        if (body.get("type") == "SELECT_NODE" and source.get("type") == "BASE_TABLE"
                and source.get("table_name", "").startswith("__duckdb_source_")
                and [e.get("class") for e in body["select_list"]] == ["STAR"]):
            names.add(entry["key"])
        else:
            kept.append(entry)
    node["cte_map"] = {"map": kept}
    return names


@dataclass
class Plan:
    """The read-ahead query, and Python objects it scans that a cursor must be given by name."""

    sql: str
    objects: dict[str, Any] = field(default_factory=dict)


# Objects a second scan reads the same way (iterators and readers would be consumed by it),
# as (module, class); a module not imported yet cannot have made the object.
_RESCANNABLE = (("pandas", "DataFrame"), ("pyarrow", "Table"), ("pyarrow.dataset", "Dataset"), ("polars", "DataFrame"))


def _rescannable(value: Any) -> bool:
    return any(isinstance(value, getattr(sys.modules.get(module), cls, ()))
               for module, cls in _RESCANNABLE)


def _python_object(name: str) -> Any:
    """The data frame a replacement scan of `name` reads: looked up, innermost frame first, in
    every thread (the one that called DuckDB is blocked in it); None unless exactly one is found."""
    found = {}
    for frame in sys._current_frames().values():
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if module.split(".")[0] in ("aiquery", "duckdb", "_duckdb"):
                frame = frame.f_back  # our own and DuckDB's wrappers: the user's code is further out
                continue
            value = frame.f_locals.get(name, frame.f_globals.get(name))
            if value is not None:
                if _rescannable(value):
                    found[id(value)] = value
                break
            frame = frame.f_back
    return next(iter(found.values())) if len(found) == 1 else None


def _table_names(tree: dict) -> set[str]:
    return {n["table_name"] for n in _walk(tree) if n.get("type") == "BASE_TABLE"
            and not n.get("schema_name") and not n.get("catalog_name")}


def plan(statement: str, parser: duckdb.DuckDBPyConnection) -> Plan | None:
    """A query yielding every ai_query call's arguments in scan order, or None if not safe."""
    select = _select_part(statement)
    tree = json.loads(parser.execute("SELECT json_serialize_sql(?)", [select]).fetchall()[0][0])
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        return None
    everything = list(_walk(tree))
    if any(n.get("class") == "FUNCTION" and n.get("function_name", "").lower() in _VOLATILE for n in everything):
        return None
    if any(n.get("sample") for n in everything):
        return None
    node = _innermost(tree["statements"][0]["node"])
    sources = _python_sources(node) if node.get("type") == "SELECT_NODE" else set()
    if node.get("type") != "SELECT_NODE" or any(m["type"] not in ("ORDER_MODIFIER", "DISTINCT_MODIFIER")
                                                 for m in node["modifiers"]):
        return None
    found: list = []
    _unconditional_calls(node["select_list"], found)
    total = sum(1 for n in everything if _is_ai_query(n))
    if not found or None in found or len(found) != total:
        return None  # an ai_query call sits somewhere it may not run for every row
    if any(_is_ai_query(n) for call in found for n in list(_walk(call["arguments"]))):
        return None  # nested calls: the inner answers are not known ahead
    columns = [dict(call, alias=f"c{i}") for i, call in enumerate(found)]
    prefetch = dict(node, select_list=columns, modifiers=[])
    tree["statements"][0]["node"] = prefetch
    sql = parser.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchall()[0][0]
    catalog = {name for (name,) in parser.execute(
        "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views()").fetchall()}
    objects = {}
    for name in (_table_names(prefetch) - catalog) | sources:
        value = _python_object(name)
        if value is not None:
            objects[name] = value
    return Plan(sql, objects)


def _rows(batch) -> list[tuple | None]:
    """(endpoint, request, options, files) per ai_query call per row, in row order; column by
    column, which is much cheaper than converting the struct rows to dicts."""
    columns = []
    for column in batch.columns:
        fields = [column.field(name).to_pylist() for name in ("endpoint", "request", "options", "files")]
        valid = column.is_valid().to_pylist()
        columns.append([row if ok else None for row, ok in zip(zip(*fields), valid)])
    return [row for per_row in zip(*columns) for row in per_row]


class Prefetcher(threading.Thread):
    """Streams a plan's rows on its own cursor and hands their calls to the engine.

    `turn()` is Query.duckdb_turn: every use of DuckDB happens inside it. `hold` blocks while the
    look-ahead window is full and answers False once the query has ended."""

    def __init__(self, plan: Plan, open_cursor: Callable[[], duckdb.DuckDBPyConnection],
                 to_calls: Callable[[list[tuple | None]], list], hold: Callable[[list], bool], turn: Callable):
        super().__init__(name="aiquery-prefetch", daemon=True)
        self._plan, self._open_cursor, self._to_calls, self._hold, self._turn = plan, open_cursor, to_calls, hold, turn

    def run(self) -> None:
        cursor = reader = None
        try:
            while True:
                with self._turn() as ok:
                    if not ok:
                        return  # the query ended; the connection closes its cursors itself
                    if cursor is None:
                        cursor = self._open_cursor()
                        for name, value in self._plan.objects.items():
                            cursor.register(name, value)
                        reader = cursor.sql(self._plan.sql).to_arrow_reader(1024)
                    batch = reader.read_next_batch()
                if not self._hold(self._to_calls(_rows(batch))):
                    return
        except StopIteration:
            with self._turn() as ok:
                if ok:
                    cursor.close()
        except Exception as exc:  # reading ahead is an optimisation: the query still runs without it
            log.debug("aiquery: not reading ahead: %s", exc)
