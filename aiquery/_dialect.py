"""Databricks SQL on DuckDB: the translation, and hints for the errors it causes untranslated.

`translate(sql, "databricks")` parses with sqlglot's Databricks dialect and writes DuckDB SQL.
sqlglot already turns double-quoted strings into 'strings', array() into lists, named_struct() and
struct() into {...}, map(k, v, ...) into MAP([...], [...]), STRING / ARRAY<...> / STRUCT<...>
types, `:` JSON paths, collect_list, EXCEPT and more. What it lacks is added here as rewrites of
the parsed tree (benchmarks/dialect.py measures both on the same examples):

- read_files(path, format => 'binaryFile') becomes read_blob with Databricks' column names (path,
  modificationTime, length, content); csv, json and parquet go to DuckDB's readers;
- CREATE [OR REPLACE | OR REFRESH] MATERIALIZED VIEW becomes CREATE TABLE ... AS: a view would call
  the model again on every read (DROP MATERIALIZED VIEW likewise);
- CREATE TABLE ... USING DELTA / PARTITIONED BY / CLUSTER BY / TBLPROPERTIES / COMMENT lose their
  storage clauses; LOCATION (an external table) is refused;
- three-part Unity Catalog names lose their catalog (DuckDB has one per attached database) unless
  it names an attached database, and the schema `default` is DuckDB's `main`; USE likewise;
- from_json(x, 'DDL') becomes json_transform, which also takes ai_query's STRUCT answers (aiquery
  answers a responseFormat with a STRUCT where Databricks answers its JSON text);
- x:a.b on a JSON string is ->> (a string value unquoted, as Databricks gives it), not ->.

ai_query's legacy form ai_query(endpoint, request, 'returnType', 'TYPE') needs no rule: the macro
reads it (aiquery/sql/options.sql).

`hint(error, sql)` explains a DuckDB error caused by Databricks SQL run without translation, and
names the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError

from ._errors import ArgumentError
from ._sqltypes import SqlType, parse_type

DIALECTS = ("databricks", "duckdb")
_ALIASES = {"databricks": "databricks", "spark": "databricks", "duckdb": "duckdb"}
_STORAGE_PROPERTIES = ("FileFormatProperty", "PartitionedByProperty", "ClusterProperty", "ClusteredByProperty",
                       "Property", "SchemaCommentProperty")
_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json",
                 ".parquet": "parquet"}
_BINARY_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".pdf", ".bin")


def dialect_name(dialect: str | None) -> str:
    """'databricks' or 'duckdb' (None); ArgumentError for any other."""
    name = _ALIASES.get((dialect or "duckdb").lower())
    if name is None:
        raise ArgumentError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    return name


def translate(sql: str, dialect: str | None = "databricks", *, catalogs: Iterable[str] = ()) -> str:
    """DuckDB SQL for `sql` written in `dialect` (statements separated by ';'). `catalogs` are the
    DuckDB databases whose names three-part names may keep as their first part."""
    if dialect_name(dialect) == "duckdb":
        return sql
    try:
        trees = sqlglot.parse(sql, read="databricks")
    except ParseError as exc:
        raise ArgumentError(f"cannot read this as Databricks SQL: {_first_line(exc)}") from None
    keep = {c.lower() for c in catalogs}
    out = []
    for tree in trees:
        if tree is None:
            continue
        tree = _rewrite(tree, keep)
        if tree is None:
            continue
        try:
            out.append(tree.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE))
        except UnsupportedError as exc:
            raise ArgumentError(f"this Databricks SQL has no DuckDB translation: {_first_line(exc)}") from None
    return ";\n".join(out) + (";" if out else "")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _rewrite(tree, catalogs: set[str]):
    if isinstance(tree, exp.Use):
        return _use(tree, catalogs)
    if isinstance(tree, exp.Refresh):
        raise ArgumentError(f"REFRESH {tree.args.get('kind') or ''} {tree.this.sql('databricks')}: the "
                            "Databricks dialect makes materialized views tables. Run their CREATE again: answers "
                            "already received come from the response cache, so only new rows are sent")
    if isinstance(tree, exp.Create):
        _create(tree)
    if isinstance(tree, exp.Drop) and tree.args.get("materialized"):
        tree.set("materialized", False)
        tree.set("kind", "TABLE")
    for table in list(tree.find_all(exp.Table)):
        function = table.this
        if isinstance(function, exp.Anonymous) and str(function.this).lower() == "read_files":
            table.replace(_read_files(function, table.alias_or_name if table.alias else "read_files"))
        else:
            _name(table, catalogs)
    for call in list(tree.find_all(exp.FromJson)):
        _from_json(call)
    for path in list(tree.find_all(exp.JSONExtract)):
        if path.args.get("variant_extract"):  # x:a.b reads a STRING's JSON: a string value comes unquoted
            path.replace(exp.JSONExtractScalar(this=path.this, expression=path.expression))
    return tree


def _use(tree, catalogs: set[str]):
    """USE CATALOG x is dropped (x is not a DuckDB database); USE SCHEMA s / USE c.s is USE s."""
    kind = str(tree.args.get("kind") or "").upper()
    table = tree.this
    parts = [p.name for p in (table.args.get("db"), table.this) if p is not None] if isinstance(table, exp.Table) \
        else [tree.this.name]
    if kind == "CATALOG":
        return tree if parts and parts[0].lower() in catalogs else None
    schema = parts[-1]
    if len(parts) == 2 and parts[0].lower() in catalogs:
        return exp.Use(this=exp.Table(this=exp.to_identifier(_schema(schema)), db=exp.to_identifier(parts[0])))
    return exp.Use(this=exp.Table(this=exp.to_identifier(_schema(schema))))


def _schema(name: str) -> str:
    return "main" if name.lower() == "default" else name


def _name(table, catalogs: set[str]) -> None:
    """catalog.schema.table: the catalog dropped unless it is an attached DuckDB database; `default` is `main`."""
    catalog, db = table.args.get("catalog"), table.args.get("db")
    if catalog is not None and catalog.name.lower() not in catalogs:
        table.set("catalog", None)
    if db is not None and db.name.lower() == "default":
        db.set("this", "main")
        db.set("quoted", False)


def _create(tree) -> None:
    properties = tree.args.get("properties")
    kept = []
    for prop in properties.expressions if properties else []:
        name = type(prop).__name__
        if name == "MaterializedProperty":
            tree.set("kind", "TABLE")
        elif name == "LocationProperty":
            raise ArgumentError("CREATE TABLE ... LOCATION (an external table) has no DuckDB equivalent: create the "
                                "table, then COPY it TO the location")
        elif name == "StreamingTableProperty":
            raise ArgumentError("CREATE STREAMING TABLE has no DuckDB equivalent: use CREATE TABLE ... AS, and "
                                "INSERT INTO it for new data")
        elif name not in _STORAGE_PROPERTIES:
            kept.append(prop)
    if properties is not None:
        tree.set("properties", exp.Properties(expressions=kept) if kept else None)
    if tree.args.get("refresh"):  # CREATE OR REFRESH (Delta Live Tables)
        tree.set("refresh", False)
        tree.set("replace", True)


def _literal_string(node) -> str | None:
    return node.this if isinstance(node, exp.Literal) and node.is_string else None


def _true(node) -> bool:
    """An option's value is true: TRUE, or the string 'true' (Databricks options are strings)."""
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    return (_literal_string(node) or "").lower() == "true"


def _read_files(call, alias: str):
    """read_files(path [, format => ..., option => ...]) as a DuckDB reader."""
    path, options = None, {}
    for arg in call.expressions:
        if isinstance(arg, (exp.Kwarg, exp.PropertyEQ)):
            options[arg.this.name.lower()] = arg.expression
        elif path is None:
            path = arg
        else:
            raise ArgumentError("read_files takes one path; give other settings by name (format => ...)")
    if path is None:
        raise ArgumentError("read_files needs a path")
    literal = _literal_string(path)
    fmt = _literal_string(options.pop("format", None)) if "format" in options else None
    if fmt is None and literal is not None:
        suffix = re.search(r"\.[A-Za-z0-9]+$", literal.rstrip("/*"))
        extension = suffix.group().lower() if suffix else ""
        fmt = _FILE_FORMATS.get(extension) or ("binaryFile" if extension in _BINARY_EXTENSIONS else None)
    if fmt is None:
        raise ArgumentError("read_files: give format => 'binaryFile', 'csv', 'json' or 'parquet' (the path's "
                            "extension does not say)")
    recursive = _true(options.pop("recursivefilelookup", None))
    glob = _literal_string(options.pop("pathglobfilter", None))
    if literal is not None and (literal.endswith("/") or glob):
        base = literal if literal.endswith("/") else literal + "/"
        literal = base + ("**/" if recursive else "") + (glob or "*")
    source = exp.Literal.string(literal) if literal is not None else path
    fmt = fmt.lower()
    if fmt == "binaryfile":
        reader = "read_blob"
        args = [source]
        columns = "filename AS path, last_modified AS modificationTime, size AS length, content"
    elif fmt in ("csv", "json", "parquet"):
        reader = {"csv": "read_csv", "json": "read_json", "parquet": "read_parquet"}[fmt]
        args = [source]
        if fmt == "csv":
            # Databricks reads a first line as data unless told header => true; DuckDB would guess.
            header = _true(options.pop("header", None))
            args.append(exp.Kwarg(this=exp.var("header"), expression=exp.Boolean(this=header)))
            separator = options.pop("sep", None) or options.pop("delimiter", None)
            if separator is not None:
                args.append(exp.Kwarg(this=exp.var("delim"), expression=separator))
        options.pop("multiline", None)  # DuckDB's read_json reads both JSON lines and arrays
        columns = "*"
    else:
        raise ArgumentError(f"read_files format {fmt!r} has no DuckDB translation here (binaryFile, csv, json, "
                            "parquet do)")
    if options:
        raise ArgumentError(f"read_files option {sorted(options)[0]!r} has no DuckDB translation here")
    arguments = ", ".join(a.sql(dialect="duckdb") for a in args)
    return sqlglot.parse_one(f"SELECT {columns} FROM {reader}({arguments})", read="duckdb").subquery(alias)


def _structure(t: SqlType) -> str:
    """json_transform's structure for a type, as JSON text."""
    def walk(node: SqlType):
        if node.kind == "struct":
            return {name: walk(sub) for name, sub in node.fields}
        if node.kind == "list":
            return [walk(node.element)]
        return node.to_duckdb()

    return json.dumps(walk(t))


def _from_json(call) -> None:
    """from_json(x, 'DDL') -> json_transform(CAST(x AS JSON), structure): x may be JSON text or,
    from aiquery's ai_query, already a STRUCT."""
    from sqlglot import exp

    ddl = _literal_string(call.args.get("expression"))
    if ddl is None or call.args.get("options") is not None:
        return
    try:
        t = parse_type(ddl, argument="from_json")
    except ArgumentError:
        t = parse_type(f"STRUCT<{ddl}>", argument="from_json")  # Spark's 'a INT, b STRING'
    value = exp.Cast(this=call.this, to=exp.DataType.build("JSON"))
    call.replace(exp.Anonymous(this="json_transform", expressions=[value, exp.Literal.string(_structure(t))]))


# --------------------------------------------------------------------------------------------
# Hints for Databricks SQL run as DuckDB SQL

_STRINGS = re.compile(r"'(?:[^']|'')*'")
_DIALECT = 'or run it with dialect="databricks" (aiquery run --dialect databricks)'


def _outside_strings(sql: str) -> str:
    return _STRINGS.sub("''", sql)


def _known_to_databricks(name: str) -> bool:
    """Whether sqlglot's Databricks dialect knows function `name` (it then has a translation)."""
    for arity in (1, 2, 3):
        try:
            node = sqlglot.parse_one(f"SELECT {name}({', '.join(['x'] * arity)})", read="databricks")
        except Exception:  # noqa: BLE001 - any parse failure means: not this arity
            continue
        call = node.expressions[0] if node.expressions else None
        if call is not None and not isinstance(call, (exp.Anonymous, exp.Column)):
            return True
    return False


def _meant_as_string(name: str, sql: str) -> bool:
    """Whether "name" in `sql` reads as a Databricks string rather than a mistyped DuckDB column:
    it is no plain identifier, or it is an argument of an ai_ function or compared with = / IN."""
    quoted = re.escape(f'"{name}"')
    if f'"{name}"' not in sql:
        return False
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return True
    return re.search(rf"\bai_\w*\s*\((?:[^;]*?){quoted}|=\s*{quoted}|\bin\s*\([^)]*{quoted}", sql, re.I) is not None


def hint(error: BaseException, sql: str) -> str | None:
    """What to change when DuckDB's `error` comes from Databricks SQL in `sql`, or None."""
    message = str(error)
    bare = _outside_strings(sql)
    column = re.search(r'Referenced column "((?:[^"]|"")*)" (?:was )?not found', message)
    if column and _meant_as_string(column.group(1), sql):
        text = column.group(1).replace('""', '"')
        quoted = "'" + text.replace("'", "''") + "'"
        return f"Databricks reads \"{text}\" as a string; write {quoted}, {_DIALECT}"
    function = re.search(r"(Scalar|Table) Function with name (\w+) does not exist", message)
    name = function.group(2).lower() if function else None
    if name == "named_struct":
        return f"named_struct('k', v, ...) is Databricks SQL; DuckDB writes a struct as {{'k': v, ...}}, {_DIALECT}"
    if name == "read_files":
        return ("read_files is Databricks SQL; DuckDB reads files of images with read_blob('dir/*.png') (columns "
                f"filename, content), CSV with read_csv, JSON with read_json, Parquet with read_parquet, {_DIALECT}")
    if isinstance(error, duckdb.ParserException):
        if re.search(r"\bmaterialized\s+view\b", bare, re.I):
            return ("CREATE MATERIALIZED VIEW is Databricks SQL; in DuckDB write CREATE TABLE ... AS (a view would "
                    f"call the model again on every read), {_DIALECT}")
        if re.search(r"\barray\s*\(\s*(?!select\b)", bare, re.I):
            return f"array(...) is Databricks SQL; DuckDB writes a list as ['a', 'b'], {_DIALECT}"
        if re.search(r"\b(?:array|struct|map)\s*<", bare, re.I):
            return ("ARRAY<...>, STRUCT<...> and MAP<...> types are Databricks SQL; DuckDB writes VARCHAR[], "
                    f"STRUCT(a INTEGER) and MAP(VARCHAR, INTEGER) (inside a string, as in returnType, both work), "
                    f"{_DIALECT}")
    if re.search(r"No function matches the given name and argument types 'map\(", message):
        return f"map(k, v, ...) is Databricks SQL; DuckDB writes MAP {{'k': v, ...}}, {_DIALECT}"
    if re.search(r'does not exist because schema "[^"]+\.[^"]+" does not exist', message):
        return ("catalog.schema.table is a Unity Catalog name; in DuckDB a table is schema.table (the schema "
                f"`default` is `main`), {_DIALECT}")
    if name and function.group(1) == "Scalar" and _known_to_databricks(name):
        return f"{name} is a Databricks function that DuckDB lacks: {_DIALECT.replace('or run', 'run')}, which translates it"
    return None


def with_hint(error: duckdb.Error, sql: str) -> duckdb.Error:
    """`error`, or an error of the same class whose message ends with the hint, when there is one."""
    text = hint(error, sql)
    if text is None:
        return error
    try:
        return type(error)(f"{error}\nhint: {text}")
    except TypeError:  # pragma: no cover - every DuckDB error class takes a message
        return error
