"""Which calls of a statement can be read ahead, and the read-ahead query that yields their arguments.

`plan(statement, cursor, ...)` reads the statement's syntax tree (DuckDB's json_serialize_sql) and
finds every call site: ai_query and each task function (ai_gen, ai_filter, ai_similarity, ...). A
site is read ahead when DuckDB surely evaluates it for a row whose *guard* holds, the guard being an
expression of that row's columns and no model answer:

* in the select list, GROUP BY, ORDER BY and DISTINCT ON keys and aggregate arguments: every row
  the WHERE clause keeps (AND and OR there evaluate both sides: DuckDB does not short-circuit them
  outside a filter);
* under CASE (its branch's WHEN holds and the earlier ones do not), IF / IFF (the condition holds,
  or not), COALESCE / IFNULL (the earlier arguments are NULL);
* in the WHERE clause: when it is the only condition there that calls a model, every row the other
  conditions keep (DuckDB filters with those first), under OR only where the other sides are not true;
* in each branch of UNION [ALL] / EXCEPT / INTERSECT, and in a plain `SELECT ... FROM (subquery)`
  wrapper (how the relational API and DuckDB's Python objects wrap queries).

The read-ahead query selects, per site, `CASE WHEN guard THEN <the site> END` from the same FROM
and WHERE; on the read-ahead cursor ai_query and the task functions only pack their arguments
(aiquery/sql/readahead*.sql), so the requests started early are the ones DuckDB's batches ask for.

Sites it leaves to the batch-by-batch path, each with the reason (Site.reason):
* under HAVING, QUALIFY, a window function, a lambda or a scalar subquery, or in another site's
  arguments or guard: they depend on aggregates or on answers not known ahead;
* the select list of a query whose WHERE calls a model (its rows depend on those answers), and
  any site of a WHERE with two conditions that call models (DuckDB may evaluate either first).
And whole statements (Plan.refusal): LIMIT or SAMPLE (DuckDB stops early, at rows a second query
cannot know), volatile functions (random(), now(), nextval(): other arguments the second time),
and sources another cursor cannot see (TEMP views and large TEMP tables are private to their
connection; smaller TEMP tables are read from a copy, aiquery/_readahead.py).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb

_VOLATILE = {
    "random", "gen_random_uuid", "uuid", "uuidv4", "uuidv7", "now", "current_timestamp", "get_current_timestamp",
    "transaction_timestamp", "current_time", "current_date", "today", "localtime", "localtimestamp",
    "nextval", "currval", "setseed", "txid_current", "current_query",
}
_NAME = r'(?:"(?:[^"]|"")*"|[\w$]+)'
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME})*"
_CTAS = re.compile(rf"(?is)^\s*create\s+(?:or\s+replace\s+)?(?:temp(?:orary)?\s+)?table\s+"
                   rf"(?:if\s+not\s+exists\s+)?{_QUALIFIED}\s+as\s+(.*)$")
_INSERT = re.compile(rf"(?is)^\s*insert\s+(?:or\s+(?:replace|ignore)\s+)?into\s+{_QUALIFIED}"
                     rf"(?:\s*\([^()]*\))?\s+((?:select|with|from|values|\().*)$")
# Objects a second scan reads the same way (iterators and readers would be consumed by it), as
# (module, class); a module not imported yet cannot have made the object.
_RESCANNABLE = (("pandas", "DataFrame"), ("pyarrow", "Table"), ("pyarrow.dataset", "Dataset"),
                ("polars", "DataFrame"))


@dataclass
class Site:
    """One call of ai_query or a task function in the statement."""

    function: str
    text: str                 # as DuckDB prints it back
    read_ahead: bool
    reason: str = ""          # why it is not read ahead


@dataclass
class Plan:
    """What reading ahead will do for a statement: the query yielding the arguments of the sites
    read ahead (columns c0, c1, ...; NULL where a guard does not hold), the Python objects and
    parameter values it needs, every site, and why nothing is read ahead when nothing is."""

    sql: str | None = None
    objects: dict[str, Any] = field(default_factory=dict)
    maybe: bool = False  # it has r... columns (see _plan_node)
    source_rows: int | None = None  # rows of the one table a statement not read ahead scans whole (for progress)
    parameters: list | dict | None = None
    sites: list[Site] = field(default_factory=list)
    refusal: str | None = None

    @property
    def reads_ahead(self) -> bool:
        return self.sql is not None

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """In words: whether the statement is read ahead, and for each site how it is sent."""
        lines = [f"read ahead: {'yes' if self.reads_ahead else 'no'}"
                 + ("" if self.reads_ahead or not self.refusal else f" ({self.refusal})")]
        for site in self.sites:
            how = "read ahead" if site.read_ahead else f"batch by batch: {site.reason or self.refusal}"
            lines.append(f"  {site.text}: {how}")
        return "\n".join(lines)


def select_part(statement: str) -> str:
    """The query of a CREATE TABLE ... AS or INSERT INTO ... SELECT (or the statement itself)."""
    statement = statement.strip().rstrip(";").strip()
    for pattern in (_CTAS, _INSERT):
        match = pattern.match(statement)
        if match:
            return match.group(1)
    return statement


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _is_site(node: Any, sites: frozenset[str]) -> bool:
    return (isinstance(node, dict) and node.get("class") == "FUNCTION" and not node.get("schema")
            and node.get("function_name", "").lower() in sites)


def _has_site(node: Any, sites: frozenset[str]) -> bool:
    return any(_is_site(n, sites) for n in _walk(node))


def _same(a: Any, b: Any) -> bool:
    """Equal expressions, wherever they were written."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("query_location", "query_location_length", "alias")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(a) == strip(b)


class _Builder:
    """Expression trees for guards and columns, made from templates DuckDB parsed itself."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection) -> None:
        self._cursor = cursor
        self._templates: dict[str, dict] = {}

    def _template(self, sql: str) -> dict:
        if sql not in self._templates:
            self._templates[sql] = _serialize(self._cursor, f"SELECT {sql}")["statements"][0]["node"]["select_list"][0]
        return copy.deepcopy(self._templates[sql])

    def _fill(self, template: str, **parts: dict) -> dict:
        tree = self._template(template)

        def replace(node):
            if isinstance(node, dict):
                if node.get("class") == "COLUMN_REF" and node.get("column_names", [""])[0] in parts:
                    return copy.deepcopy(parts[node["column_names"][0]])
                return {k: replace(v) for k, v in node.items()}
            if isinstance(node, list):
                return [replace(v) for v in node]
            return node
        return replace(tree)

    def true(self, expr: dict) -> dict:
        return self._fill("coalesce(__x, false)", __x=expr)

    def not_true(self, expr: dict) -> dict:
        return self._fill("NOT coalesce(__x, false)", __x=expr)

    def null(self, expr: dict) -> dict:
        return self._fill("__x IS NULL", __x=expr)

    def all_of(self, exprs: list[dict]) -> dict:
        tree = exprs[0]
        for expr in exprs[1:]:
            tree = self._fill("__a AND __b", __a=tree, __b=expr)
        return tree

    def when(self, guard: dict, value: dict) -> dict:
        return self._fill("CASE WHEN __g THEN __v END", __g=guard, __v=value)

    def alias(self, expr: dict, name: str) -> dict:
        return dict(expr, alias=name)


def _serialize(cursor: duckdb.DuckDBPyConnection, sql: str) -> dict:
    return json.loads(cursor.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])


class _Sites:
    """Finds the sites of one query node with their guards."""

    def __init__(self, sites: frozenset[str], builder: _Builder) -> None:
        self.names, self.build = sites, builder
        self.found: list[tuple[dict, list[dict]]] = []  # (site, guard conditions) read ahead
        self.refused: list[tuple[dict, str]] = []

    def refuse_all(self, expr: Any, reason: str) -> None:
        for node in _walk(expr):
            if _is_site(node, self.names):
                self.refused.append((node, reason))

    def visit(self, expr: Any, guard: list[dict], in_filter: bool = False) -> None:
        """Records the sites under `expr`, evaluated for rows where every condition of `guard` holds."""
        if isinstance(expr, list):
            for item in expr:
                self.visit(item, guard, in_filter)
            return
        if not isinstance(expr, dict):
            return
        if _is_site(expr, self.names):
            inner = [a.get("expression") for a in expr.get("arguments", [])]
            if _has_site(inner, self.names):
                self.refused.append((expr, "its arguments hold another model's answer"))
                for argument in inner:
                    self.visit(argument, guard)
            else:
                self.found.append((expr, guard))
            return
        cls, kind = expr.get("class"), expr.get("type")
        name = expr.get("function_name", "").lower() if cls == "FUNCTION" else ""
        if cls in ("LAMBDA", "SUBQUERY", "WINDOW"):
            what = {"LAMBDA": "a lambda", "SUBQUERY": "a subquery", "WINDOW": "a window function"}[cls]
            self.refuse_all(expr, f"it is inside {what}")
        elif cls == "CASE":
            self._case(expr, guard)
        elif kind == "OPERATOR_COALESCE" or name in ("coalesce", "ifnull"):
            children = expr["children"] if cls == "OPERATOR" else [a["expression"] for a in expr["arguments"]]
            self._in_order(children, guard, self.build.null, "an earlier argument of COALESCE calls a model")
        elif name in ("if", "iff") and len(expr.get("arguments", [])) == 3:
            condition, then, otherwise = (a["expression"] for a in expr["arguments"])
            self.visit(condition, guard)
            if _has_site(condition, self.names):
                self.refuse_all([then, otherwise], "its IF condition calls a model")
            else:
                self.visit(then, guard + [self.build.true(condition)])
                self.visit(otherwise, guard + [self.build.not_true(condition)])
        elif in_filter and cls == "CONJUNCTION":
            holds = self.build.true if kind == "CONJUNCTION_AND" else self.build.not_true
            self._filter_conjunction(expr["children"], guard, holds)
        else:  # evaluated whenever `expr` is, an aggregate's FILTER (WHERE ...) included
            for value in expr.values():
                self.visit(value, guard)

    def _in_order(self, parts: list[dict], guard: list[dict], skipped, reason: str) -> None:
        """Each part runs where the earlier ones are `skipped` (COALESCE: NULL)."""
        conditions = list(guard)
        for i, part in enumerate(parts):
            self.visit(part, conditions)
            if _has_site(part, self.names):
                self.refuse_all(parts[i + 1:], reason)
                return
            conditions = conditions + [skipped(part)]

    def _case(self, expr: dict, guard: list[dict]) -> None:
        conditions = list(guard)
        checks = expr["case_checks"]
        for i, check in enumerate(checks):
            self.visit(check["when_expr"], conditions)
            if _has_site(check["when_expr"], self.names):
                rest = [check["then_expr"], *[c for c in checks[i + 1:]], expr.get("else_expr")]
                self.refuse_all(rest, "a WHEN before it calls a model")
                return
            self.visit(check["then_expr"], conditions + [self.build.true(check["when_expr"])])
            conditions = conditions + [self.build.not_true(check["when_expr"])]
        self.visit(expr.get("else_expr"), conditions)

    def _filter_conjunction(self, children: list[dict], guard: list[dict], holds) -> None:
        """In a filter, DuckDB evaluates a side that calls a model on the rows the others leave to it."""
        calling = [c for c in children if _has_site(c, self.names)]
        if len(calling) > 1:
            self.refuse_all(calling, "another condition beside it calls a model too, and DuckDB may evaluate "
                                     "either first")
            return
        others = [holds(c) for c in children if not _has_site(c, self.names)]
        for child in calling:
            self.visit(child, guard + others, in_filter=True)


def _conjuncts(expr: dict | None) -> list[dict]:
    if expr is None:
        return []
    if expr.get("class") == "CONJUNCTION" and expr.get("type") == "CONJUNCTION_AND":
        return [part for child in expr["children"] for part in _conjuncts(child)]
    return [expr]


def _innermost(node: dict, sites: frozenset[str]) -> dict:
    """Descends through plain `SELECT ... FROM (subquery)` wrappers to the node that calls the
    sites, carrying the wrappers' CTEs down (DuckDB's Python API wraps queries over Python objects so)."""
    while (node.get("type") == "SELECT_NODE" and node["from_table"].get("type") == "SUBQUERY"
           and not _has_site([node["select_list"], node.get("where_clause"), node.get("group_expressions"),
                              node.get("having"), node.get("qualify"), node["modifiers"]], sites)
           and node.get("where_clause") is None and node.get("having") is None and node.get("qualify") is None
           and not node.get("group_expressions")
           and all(m["type"] in ("ORDER_MODIFIER", "DISTINCT_MODIFIER") for m in node["modifiers"])):
        inner = node["from_table"]["subquery"]["node"]
        inner_names = {entry["key"] for entry in inner["cte_map"]["map"]}
        carried = [entry for entry in node["cte_map"]["map"] if entry["key"] not in inner_names]
        node = dict(inner, cte_map={"map": carried + inner["cte_map"]["map"]})
    return node


class _Refused(Exception):
    pass


def _plan_node(node: dict, sites: frozenset[str], builder: _Builder, report: list[tuple[dict, str | None]]
               ) -> tuple[dict | None, list[str]]:
    """The read-ahead node for one query node (None if none of its sites is read ahead) and its
    column names; every site found goes to `report` with None or the reason it is refused.

    Columns named c... hold calls DuckDB surely makes. Columns named r... hold the calls of a site in
    WHERE for the rows its other conditions reject: DuckDB orders a filter's conditions by its own
    cost rules and may evaluate the site on those rows too, or not; the read-ahead watches DuckDB's
    first batches to learn which (aiquery/_readahead.py)."""
    if any(m["type"] == "LIMIT_MODIFIER" or m["type"] == "LIMIT_PERCENT_MODIFIER" for m in node["modifiers"]):
        raise _Refused("it has a LIMIT: DuckDB stops early, at rows a second query cannot know")
    if node["type"] == "SET_OPERATION_NODE":
        branches = [_plan_node(_innermost(child, sites), sites, builder, report)
                    for child in node.get("children") or [node["left"], node["right"]]]
        kept = [(b, names) for b, names in branches if b is not None]
        if not kept:
            return None, []
        renamed = [[f"{name[0]}{sum(len(n) for _, n in kept[:j])}_{i}" for i, name in enumerate(names)]
                   for j, (_, names) in enumerate(kept)]
        everyone = [name for names in renamed for name in names]
        union = None
        for (branch, _), names in zip(kept, renamed):  # every branch gets every column: its own, NULL elsewhere
            own = dict(zip(names, branch["select_list"]))
            branch["select_list"] = [builder.alias(own[name] if name in own else builder._template("NULL"), name)
                                     for name in everyone]
            union = branch if union is None else {
                "type": "SET_OPERATION_NODE", "modifiers": [], "cte_map": {"map": []}, "setop_type": "UNION",
                "left": None, "right": None, "setop_all": True, "children": [union, branch]}
        return union, everyone
    if node["type"] != "SELECT_NODE":
        raise _Refused(f"a {node['type']} is not read ahead")
    finder = _Sites(sites, builder)
    where = _conjuncts(node.get("where_clause"))
    calling = [c for c in where if _has_site(c, sites)]
    plain = [c for c in where if not _has_site(c, sites)]
    after_filter = [node["select_list"], node.get("group_expressions"),
                    [m.get("distinct_on_targets") for m in node["modifiers"]],
                    [[o["expression"] for o in m.get("orders", [])] for m in node["modifiers"]]]
    if len(calling) > 1:
        finder.refuse_all(calling, "two conditions of the WHERE clause call models, and DuckDB may evaluate "
                                   "either first")
    elif calling:
        finder.visit(calling[0], [], in_filter=True)
    if calling:
        finder.refuse_all(after_filter, "its rows are the ones a model's answer in WHERE keeps, not known ahead")
    else:
        selected = node["select_list"]
        finder.visit(selected, [])
        keys = [k for k in (node.get("group_expressions") or []) if not any(_same(k, s) for s in selected)]
        finder.visit(keys, [])
        for modifier in node["modifiers"]:
            finder.visit([t for t in modifier.get("distinct_on_targets") or [] if not any(_same(t, s) for s in selected)], [])
            finder.visit([o["expression"] for o in modifier.get("orders", [])
                          if not any(_same(o["expression"], s) for s in selected)], [])
    finder.refuse_all(node.get("having"), "it is in HAVING (it depends on the groups)")
    finder.refuse_all(node.get("qualify"), "it is in QUALIFY (it depends on window results)")
    finder.refuse_all(node.get("from_table"), "it is in a subquery of the FROM clause")
    finder.refuse_all(node.get("cte_map"), "it is in a WITH clause")
    refused_ids = {id(site) for site, _ in finder.refused}
    for site, reason in finder.refused:
        report.append((site, reason))
    kept = [(site, guard) for site, guard in finder.found if id(site) not in refused_ids]
    for site, _ in kept:
        report.append((site, None))
    if not kept:
        return None, []
    columns, names = [], []
    for i, (site, guard) in enumerate(kept):
        if calling and plain:  # a site in WHERE: DuckDB may evaluate it before the other conditions, or after
            kept_rows = builder.all_of([builder.true(c) for c in plain])
            columns += [builder.when(builder.all_of([kept_rows, *guard]), site),
                        builder.when(builder.all_of([builder.not_true(kept_rows), *guard]), site)]
            names += [f"c{i}", f"r{i}"]
        else:
            columns.append(site if not guard else builder.when(builder.all_of(guard), site))
            names.append(f"c{i}")
    where = None if calling else builder.all_of(plain) if plain else None
    prefetch = dict(node, select_list=[builder.alias(c, name) for c, name in zip(columns, names)],
                    where_clause=where, group_expressions=[], group_sets=[], having=None, qualify=None,
                    modifiers=[], aggregate_handling="STANDARD_HANDLING")
    return prefetch, names


def _rescannable(value: Any) -> bool:
    return any(isinstance(value, getattr(sys.modules.get(module), cls, ())) for module, cls in _RESCANNABLE)


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


# A name DuckDB's replacement scan reads as a file (FROM 'reviews.parquet', 's3://bucket/*.csv'): every
# cursor reads it alike.
_FILE_NAME = re.compile(r"(?i)[/*?]|://|\.(parquet|csv|tsv|json|jsonl|ndjson|txt|arrow|feather|xlsx)(\.gz|\.zst)?$")


def _sources(tree: Any) -> set[str]:
    """Unqualified table names the query reads (some may be CTEs), not files."""
    return {n["table_name"] for n in _walk(tree) if n.get("type") == "BASE_TABLE"
            and not n.get("schema_name") and not n.get("catalog_name") and not _FILE_NAME.search(n["table_name"])}


def _cte_names(tree: Any) -> set[str]:
    return {entry["key"] for n in _walk(tree) if isinstance(n.get("cte_map"), dict) for entry in n["cte_map"]["map"]}


def _parameters(tree: Any) -> list[str]:
    return sorted({n["identifier"] for n in _walk(tree) if n.get("class") == "PARAMETER"})


def plan(statement: str, cursor: duckdb.DuckDBPyConnection, sites: frozenset[str],
         registered: Mapping[str, Any] | None = None, parameters: list | dict | None = None) -> Plan:
    """The read-ahead plan of `statement` (see the module's docstring). `cursor` is a cursor of the
    connection without the aiquery macros; `registered` the objects `con.register()` named there;
    `parameters` the values the statement was executed with."""
    result = Plan()
    try:
        tree = _serialize(cursor, select_part(statement))
    except duckdb.Error as exc:
        result.refusal = f"DuckDB could not parse it for planning ({exc})"
        return result
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        result.refusal = "it is not one query DuckDB can describe"
        return result
    builder = _Builder(cursor)
    root = tree["statements"][0]["node"]
    report: list[tuple[dict, str | None]] = []
    try:
        everything = list(_walk(tree))
        volatile = sorted({n["function_name"] for n in everything if n.get("class") == "FUNCTION"
                           and n.get("function_name", "").lower() in _VOLATILE})
        if volatile:
            raise _Refused(f"it calls {', '.join(volatile)}, which would give a second query other arguments")
        if any(n.get("sample") for n in everything):
            raise _Refused("it has USING SAMPLE: a second query would sample other rows")
        node = _innermost(root, sites)
        python = _python_sources(node) if node.get("type") == "SELECT_NODE" else set()
        prefetch, names = _plan_node(node, sites, builder, report)
    except _Refused as refusal:
        result.refusal = str(refusal)
        prefetch, names = None, []
    everything_sites = [n for n in _walk(root) if _is_site(n, sites)]
    reasons = {id(site): reason for site, reason in report}
    for site in everything_sites:
        reason = reasons.get(id(site), "" if id(site) in reasons else (result.refusal or "the planner did not reach it"))
        result.sites.append(Site(site["function_name"], _text(cursor, site), id(site) in reasons and reason is None,
                                 reason or ""))
    if prefetch is None:
        if result.refusal is None:
            result.refusal = ("none of its calls can be read ahead" if result.sites else
                              "it calls neither ai_query nor a task function")
        result.source_rows = _source_rows(root, cursor, registered)
        return result
    used = _parameters(prefetch)
    if used:
        if parameters is None:
            result.refusal = ("it has parameters whose values aiquery did not see (it reads them from "
                              "con.execute(sql, parameters))")
            return _none_read(result)
        prefetch["select_list"] += [builder.alias(_parameter(builder, name), f"__p{name}") for name in
                                    _parameters(root) if name not in used]
        result.parameters = parameters
    tree["statements"][0]["node"] = prefetch
    result.maybe = any(name.startswith("r") for name in names)
    result.sql = cursor.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchall()[0][0]
    catalog = {name for (name,) in cursor.execute(
        "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views()").fetchall()}
    missing = []
    sources = _sources(prefetch)
    # A registered object or a TEMP table shadows a table of the same name, as it does in DuckDB.
    for name in sorted(((sources - catalog) | (sources & set(registered or {})) | python) - _cte_names(prefetch)):
        value = (registered or {}).get(name)
        value = value if value is not None else _python_object(name)
        if value is None:
            missing.append(name)
        else:
            result.objects[name] = value
    if missing:
        result.sql = None
        result.refusal = (f"it reads {', '.join(missing)}, which a second cursor cannot see: a TEMP view, or a "
                          "TEMP table too large to copy or read through con.sql() (DuckDB keeps those per "
                          "connection; aiquery copies a TEMP table of up to 200,000 rows for a statement run "
                          "with con.execute()). A regular table (CREATE TABLE, also in :memory:) or a "
                          "registered DataFrame is read ahead")
        return _none_read(result)
    return result


def _source_rows(node: dict, cursor: duckdb.DuckDBPyConnection, registered: Mapping[str, Any] | None) -> int | None:
    """The rows a SELECT hands ai_query when it scans one table, registered object or TEMP table's
    copy whole (no WHERE, no LIMIT): DuckDB keeps a table's row count. Else None."""
    source = node.get("from_table") or {}
    if (node.get("type") != "SELECT_NODE" or source.get("type") != "BASE_TABLE" or source.get("schema_name")
            or node.get("where_clause") is not None
            or any("LIMIT" in modifier.get("type", "") for modifier in node.get("modifiers", []))):
        return None
    value = (registered or {}).get(source["table_name"])
    if value is not None:
        rows = getattr(value, "num_rows", None)  # an Arrow table; a data frame has a len()
        return rows if isinstance(rows, int) else (len(value) if hasattr(value, "__len__") else None)
    found = cursor.execute("SELECT estimated_size FROM duckdb_tables() WHERE table_name = ? AND NOT temporary",
                           [source["table_name"]]).fetchall()
    return found[0][0] if len(found) == 1 else None


def _parameter(builder: _Builder, name: str) -> dict:
    node = builder._template("$1")
    node["identifier"] = name
    return node


def _none_read(result: Plan) -> Plan:
    for site in result.sites:
        if site.read_ahead:
            site.read_ahead, site.reason = False, result.refusal or ""
    return result


def _text(cursor: duckdb.DuckDBPyConnection, node: dict) -> str:
    """An expression as SQL text."""
    tree = {"error": False, "statements": [{"node": {
        "type": "SELECT_NODE", "modifiers": [], "cte_map": {"map": []}, "select_list": [dict(node, alias="")],
        "from_table": {"type": "EMPTY"}, "where_clause": None, "group_expressions": [], "group_sets": [],
        "aggregate_handling": "STANDARD_HANDLING", "having": None, "sample": None, "qualify": None}}]}
    try:
        text = cursor.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchall()[0][0]
    except duckdb.Error:
        return node.get("function_name", "?") + "(...)"
    return text.removeprefix("SELECT ").strip()
