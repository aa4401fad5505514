"""aiquery._sqltypes against a real DuckDB 2.0: parsing, the SQL conversion, JSON schemas, conform."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiquery._errors import ArgumentError, OutputError
from aiquery._sqltypes import (
    _ALIASES, _INT_RANGES, _SPELLINGS, MAX_GENERIC_DEPTH, SqlType, conform, ddl_to_duckdb_sql,
    parse_output, parse_type,
)


@pytest.fixture(scope="module")
def duck():
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    yield connection
    connection.close()


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def duck_type(duck, structure_sql: str) -> str:
    """The type json_transform gives for a structure; json_transform demands a constant there,
    so this also proves `structure_sql` folds at bind time."""
    return duck.execute(f"SELECT typeof(json_transform('null', to_json({structure_sql})))").fetchall()[0][0]


def assert_sql_agrees(duck, text: str) -> SqlType:
    t = parse_type(text)
    assert duck_type(duck, ddl_to_duckdb_sql(lit(text))) == duck_type(duck, lit(t.to_duckdb())), text
    return t


def transform(duck, value, t: SqlType):
    """What json_transform_strict makes of conform's answer, as DuckDB hands it to Python."""
    return duck.execute("SELECT json_transform_strict(?, to_json(?::VARCHAR))",
                        [json.dumps(value), t.to_duckdb()]).fetchall()[0][0]


def S(name, precision=0, scale=0):
    return SqlType("scalar", name, precision, scale)


INTEGER, VARCHAR, DOUBLE = S("INTEGER"), S("VARCHAR"), S("DOUBLE")


# ---------------------------------------------------------------------------------------------
# Parsing and the SQL conversion

TYPE_STRINGS = [
    # Spark / Databricks DDL
    "STRUCT<label: STRING, score: DOUBLE>",
    "ARRAY<STRUCT<a: INT, b: ARRAY<STRING>>>",
    "MAP<STRING, ARRAY<DOUBLE>>",
    "STRUCT<x: DECIMAL(10,2)>",
    "STRUCT<x: DECIMAL(10, 2), y: DECIMAL(5), z: DECIMAL>",
    "struct<label: string, score: double>",
    "array<map<string, int>>",
    "  STRUCT <  label :STRING ,score   DOUBLE  >  ",
    "STRUCT<\n  label: STRING,\n  score: DOUBLE\n>",
    "STRUCT<`my field`: STRING, `x-y.z`: INT, `über`: LONG>",
    "STRUCT<a STRING, b INT>",
    "STRUCT<a:STRING,b:INT>",
    "STRUCT<from: STRING, select: INT, order: BOOLEAN, Label: SHORT>",
    "STRUCT<id: BIGINT NOT NULL, name: STRING COMMENT 'the name', age: INT NOT NULL COMMENT 'years'>",
    "STRUCT<a: INT COMMENT 'tricky, <text> (with) ''quotes'' and \\' escapes', b: STRING>",
    "STRUCT<`not null`: INT, `my byte`: BYTE, `comment`: STRING, `array`: ARRAY<INT>>",
    "STRUCT<byte: BYTE, long: LONG, short: SHORT, binary: INT, string: STRING, int: INT>",
    "ARRAY<BYTE>", "MAP<BYTE, BYTE>", "byte", "MAP<STRING, ARRAY<SHORT>>",
    "ARRAY<INT>[]", "ARRAY<INT>[3]", "ARRAY < INT > [ 2 ]",
    "MAP<INT, STRUCT<a: ARRAY<DATE>, b: TIMESTAMP>>",
    "ARRAY<ARRAY<ARRAY<ARRAY<ARRAY<ARRAY<INT>>>>>>",
    "STRUCT<a: STRUCT<b: STRUCT<c: STRUCT<d: STRUCT<e: ARRAY<INT>>>>>>",
    "STRUCT<1: INT, 2nd: STRING, _x: DOUBLE>",
    "STRUCT<a:\fINT,\rb\f:\r\nSTRING>",
    "STRUCT<`É`: INT, `é`: INT, `a\u2028b`: INT>",
    "STRUCT<a: VARCHAR(20), b: CHAR(3)>",
    # DuckDB spelling
    "STRUCT(a INTEGER, b VARCHAR[])",
    'STRUCT("a b" INTEGER, "select" VARCHAR)',
    "STRUCT(from VARCHAR, Label INTEGER)",
    "INTEGER[]", "FLOAT[3]", "VARCHAR[][2]", "MAP(VARCHAR, INTEGER)", "DECIMAL(10,2)",
    "STRUCT(a INTEGER)[]", "MAP(VARCHAR, STRUCT(x DOUBLE[]))[2]",
    # Mixed
    "STRUCT(a ARRAY<INT>, b MAP<STRING, INT>)", "ARRAY<STRUCT(a INTEGER)>",
    # Scalars
    "STRING", "LONG", "SHORT", "INT", "DOUBLE", "FLOAT", "BOOLEAN", "DATE", "TIME",
    "TIMESTAMP", "TIMESTAMPTZ", "UUID", "DECIMAL", "NUMERIC(38, 10)", "int", "Varchar",
]


@pytest.mark.parametrize("text", TYPE_STRINGS)
def test_sql_conversion_agrees_with_parser(duck, text):
    assert_sql_agrees(duck, text)


@pytest.mark.parametrize("alias", sorted(a for a, canon in _ALIASES.items() if canon != "BLOB"))
def test_every_alias_means_what_duckdb_means(duck, alias):
    for text in (alias, alias.lower(), f"ARRAY<{alias}>", f"STRUCT<x: {alias}>"):
        assert_sql_agrees(duck, text)


@pytest.mark.parametrize("alias", _SPELLINGS["BLOB"] + ("BLOB",))
def test_blob_is_refused_with_a_reason(alias):
    with pytest.raises(ArgumentError, match="cannot come from a model's text answer; use STRING"):
        parse_type(f"STRUCT<a: {alias}>", argument="returnType")


def test_sql_works_inside_a_macro(duck):
    # DuckDB 2.0 binds a macro's body at CREATE time, while its parameters are still unknown.
    duck.execute(f"CREATE MACRO type_of(t) AS "
                 f"typeof(json_transform('null', to_json({ddl_to_duckdb_sql('t')})))")
    for text in ["STRUCT<label: STRING, score: DOUBLE>", "ARRAY<BYTE>", "INTEGER[3]"]:
        got = duck.execute("SELECT type_of(?)", [text]).fetchall()[0][0]
        assert got == duck_type(duck, lit(parse_type(text).to_duckdb()))
    with pytest.raises(duckdb.BinderException, match="constant"):   # as json_transform demands
        duck.execute("SELECT type_of(t) FROM (VALUES ('INT')) v(t)")
    duck.execute("DROP MACRO type_of")


def test_sql_of_null_is_null(duck):
    assert duck.execute(f"SELECT {ddl_to_duckdb_sql('NULL')}").fetchall()[0][0] is None


def test_sql_is_compact():
    assert len(ddl_to_duckdb_sql("x")) < 900


@pytest.mark.parametrize("text, expected", [
    ("STRUCT<label: STRING, score: DOUBLE>", 'STRUCT("label" VARCHAR, "score" DOUBLE)'),
    ("ARRAY<STRUCT<a: INT, b: ARRAY<STRING>>>", 'STRUCT("a" INTEGER, "b" VARCHAR[])[]'),
    ("MAP<STRING, ARRAY<DOUBLE>>", "MAP(VARCHAR, DOUBLE[])"),
    ("STRUCT<x: DECIMAL(10,2)>", 'STRUCT("x" DECIMAL(10,2))'),
    ("DECIMAL", "DECIMAL(18,3)"), ("DECIMAL(5)", "DECIMAL(5,0)"),
    ("LONG", "BIGINT"), ("SHORT", "SMALLINT"), ("BYTE", "TINYINT"),
    ("STRING", "VARCHAR"), ("VARCHAR(10)", "VARCHAR"), ("FLOAT[3]", "FLOAT[3]"),
    ("INTEGER[][2]", "INTEGER[][2]"), ("STRUCT<`my field`: INT>", 'STRUCT("my field" INTEGER)'),
])
def test_canonical_duckdb_spelling(text, expected):
    assert parse_type(text).to_duckdb() == expected


def test_tree_shape():
    t = parse_type("STRUCT<a: INT NOT NULL, b: ARRAY<STRING>, c: MAP<STRING, DOUBLE>, d: INT[2]>")
    assert t.is_struct and not t.fields[1][1].is_struct
    assert t == SqlType("struct", fields=(
        ("a", INTEGER),
        ("b", SqlType("list", element=VARCHAR)),
        ("c", SqlType("map", key=VARCHAR, value=DOUBLE)),
        ("d", SqlType("array", element=INTEGER, size=2)),
    ))


def test_field_names_keep_their_case():
    assert parse_type("STRUCT<Label: STRING>").fields[0][0] == "Label"


def test_nesting_limit(duck):
    deep = "ARRAY<" * MAX_GENERIC_DEPTH + "INT" + ">" * MAX_GENERIC_DEPTH
    assert_sql_agrees(duck, deep)
    with pytest.raises(ArgumentError, match="nest more than"):
        parse_type("ARRAY<" + deep + ">")
    # DuckDB spelling needs no rewriting passes, so it may nest deeper.
    assert_sql_agrees(duck, "INTEGER" + "[]" * (MAX_GENERIC_DEPTH + 3))


def test_unknown_type_message():
    with pytest.raises(ArgumentError) as e:
        parse_type("STRUCT<a: STRNG>", argument="responseFormat")
    assert str(e.value) == ("responseFormat: cannot read type 'STRUCT<a: STRNG>': unknown type STRNG "
                            "(expected e.g. STRING, INT, DOUBLE, BOOLEAN, ARRAY<...>, STRUCT<...>)")


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("   ", "empty"),
    ("STRNG", "unknown type STRNG"),
    ("ARRAY", "'<'"),
    ("ARRAY<INT", "'>'"),
    ("ARRAY<INT>>", "unexpected '>'"),
    ("STRUCT<>", "field name"),
    ("STRUCT<a: INT,>", "field name"),
    ("STRUCT<a INT, A STRING>", "appears twice"),
    ("STRUCT<a>", "type"),
    ('STRUCT<"a"INT>', "':' or a space"),
    ("STRUCT<``: INT>", "empty field name"),
    ("STRUCT<`a,b`: INT>", "may not"),
    ("STRUCT<`a<b>`: INT>", "may not"),
    ("STRUCT<`it's`: INT>", "may not"),
    ("STRUCT<`a\"b`: INT>", "may not"),
    ("MAP<STRING>", "','"),
    ("MAP<ARRAY<INT>, INT>", "MAP keys must be a scalar"),
    ("DECIMAL(39,2)", "precision"),
    ("DECIMAL(5,6)", "precision"),
    ("DECIMAL(0)", "precision"),
    ("DECIMAL(a)", "precision"),
    ("INT(11)", "no parameters"),
    ("INT[0]", "array size"),
    ("INT[100001]", "array size"),
    ("INT[x]", "array size"),
    ("INT NOT NULL", "unexpected 'NOT'"),
    ("STRUCT<a: INT NOT>", "NULL after NOT"),
    ("STRUCT<a: INT COMMENT>", "quoted text after COMMENT"),
    ("STRUCT<a: INT COMMENT \"x\">", "quoted text after COMMENT"),
    ("INT;", "unexpected character ';'"),
    ("TIMESTAMP WITH TIME ZONE", "unexpected 'WITH'"),
])
def test_parse_errors_name_the_argument(text, problem):
    with pytest.raises(ArgumentError) as e:
        parse_type(text, argument="returnType")
    message = str(e.value)
    assert message.startswith(f"returnType: cannot read type '{text}': ")
    assert problem in message


def test_parse_error_shortens_long_text():
    text = "STRUCT<" + ", ".join(f"f{i}: INT" for i in range(100)) + ", bad: NOPE>"
    with pytest.raises(ArgumentError, match=r"\.\.\.': unknown type NOPE"):
        parse_type(text)


def test_parse_rejects_non_strings():
    with pytest.raises(ArgumentError, match="responseFormat"):
        parse_type(None, argument="responseFormat")


# ---------------------------------------------------------------------------------------------
# Property tests: random types, rendered in random spellings

# A quoted name may hold anything but the characters the SQL conversion reads as structure.
_quoted_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="`\"'<>()[],"),
    min_size=1, max_size=8)
_names = st.one_of(
    st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True),
    st.sampled_from(["from", "select", "not", "null", "comment", "byte", "array", "map", "struct",
                     "Label", "int", "NOT NULL", "my byte", "a: b", "x not null", "order by"]),
    _quoted_names)
_scalar_names = sorted(set(_SPELLINGS) - {"BLOB"})


@st.composite
def _scalars(draw):
    name = draw(st.sampled_from(_scalar_names))
    if name != "DECIMAL":
        return S(name)
    precision = draw(st.integers(1, 38))
    return S(name, precision, draw(st.integers(0, precision)))


def _types(max_leaves=8):
    def extend(children):
        return st.one_of(
            st.builds(lambda e: SqlType("list", element=e), children),
            st.builds(lambda e, n: SqlType("array", element=e, size=n), children, st.integers(1, 4)),
            st.builds(lambda k, v: SqlType("map", key=k, value=v), _scalars(), children),
            st.lists(st.tuples(_names, children), min_size=1, max_size=4,
                     unique_by=lambda f: f[0].lower()).map(
                lambda fs: SqlType("struct", fields=tuple(fs))),
        )
    return st.recursive(_scalars(), extend, max_leaves=max_leaves)


@st.composite
def _spellings(draw, t: SqlType, depth: int = 0) -> str:
    """`t` written the way a person might: either spelling per node, any case, odd spacing."""
    def ws(required=False):
        return draw(st.sampled_from([" ", "\n  ", "\t", "\r\n", "\f"] + ([] if required else [""])))

    def case(word):
        return draw(st.sampled_from([word, word.lower(), word.capitalize()]))

    spark = depth < MAX_GENERIC_DEPTH and draw(st.booleans())
    if t.kind == "scalar":
        alias = case(draw(st.sampled_from([t.name, *_SPELLINGS[t.name]])))
        if t.name == "DECIMAL":
            if (t.precision, t.scale) == (18, 3) and draw(st.booleans()):
                return alias
            if t.scale == 0 and draw(st.booleans()):
                return f"{alias}({ws()}{t.precision}{ws()})"
            return f"{alias}({t.precision},{ws()}{t.scale})"
        if t.name == "VARCHAR" and draw(st.booleans()):
            return f"{alias}({draw(st.integers(1, 99))})"
        return alias
    if t.kind in ("list", "array"):
        inner = draw(_spellings(t.element, depth + 1 if spark else depth))
        if t.kind == "list" and spark:
            return f"{case('ARRAY')}{ws()}<{ws()}{inner}{ws()}>"
        return f"{inner}{ws()}[{ws()}{t.size or ''}{ws()}]"
    open_, close = ("<", ">") if spark else ("(", ")")
    inner_depth = depth + 1 if spark else depth
    if t.kind == "map":
        key = draw(_spellings(t.key, inner_depth))
        value = draw(_spellings(t.value, inner_depth))
        return f"{case('MAP')}{ws()}{open_}{ws()}{key}{ws()},{ws()}{value}{ws()}{close}"
    fields = []
    for name, field_type in t.fields:
        if all(c.isascii() and (c.isalnum() or c == "_") for c in name) and draw(st.booleans()):
            shown = name
        else:
            shown = draw(st.sampled_from(["`{}`", '"{}"'])).format(name)
        sep = draw(st.sampled_from([":", " :", ": ", " : "])) if draw(st.booleans()) else ws(True)
        field = f"{shown}{sep}{draw(_spellings(field_type, inner_depth))}"
        if draw(st.booleans()):
            field += f"{ws(True)}NOT{ws(True)}NULL"
        if draw(st.booleans()):
            field += ws(True) + "COMMENT" + ws(True) + draw(st.sampled_from(
                ["'x'", "'a, b > c) d'", "'it''s'", r"'say \'hi\', <ok>'", "'NOT NULL, x'", "''"]))
        fields.append(ws() + field + ws())
    return f"{case('STRUCT')}{ws()}{open_}{','.join(fields)}{close}"


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(_types())
def test_canonical_spelling_round_trips(t):
    assert parse_type(t.to_duckdb()) == t


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_spelling_parses_and_sql_agrees(duck, data):
    t = data.draw(_types())
    text = data.draw(_spellings(t))
    assert parse_type(text) == t, text
    got = duck_type(duck, ddl_to_duckdb_sql(lit(text)))
    assert got == duck_type(duck, lit(t.to_duckdb())), text


# ---------------------------------------------------------------------------------------------
# JSON schema

def test_json_schema_of_nested_struct():
    t = parse_type("STRUCT<label: STRING, score: DOUBLE, price: DECIMAL(10,2), day: DATE, "
                   "at: TIMESTAMP, tags: ARRAY<STRING>, pair: INT[2], "
                   "inner: STRUCT<ok: BOOLEAN, ids: ARRAY<STRUCT<id: LONG>>>, counts: MAP<STRING, INT>>")
    s = t.to_json_schema()
    assert s["type"] == "object" and s["additionalProperties"] is False
    assert s["required"] == ["label", "score", "price", "day", "at", "tags", "pair", "inner", "counts"]
    p = s["properties"]
    assert p["label"] == {"type": "string"}
    assert p["score"] == {"type": "number"}
    assert p["price"] == {"type": "number"}
    assert p["day"] == {"type": "string", "format": "date"}
    assert p["at"] == {"type": "string", "format": "date-time"}
    assert p["tags"] == {"type": "array", "items": {"type": "string"}}
    assert p["pair"] == {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
    assert p["counts"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    inner = p["inner"]
    assert inner["additionalProperties"] is False and inner["required"] == ["ok", "ids"]
    ids = inner["properties"]["ids"]["items"]
    assert ids == {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                   "additionalProperties": False}
    json.dumps(s)  # plain JSON


@settings(max_examples=200, deadline=None)
@given(_types())
def test_every_object_in_a_schema_is_strict(t):
    def walk(s):
        if s.get("type") == "object" and "properties" in s:
            assert s["additionalProperties"] is False
            assert s["required"] == list(s["properties"])
        for child in [*s.get("properties", {}).values(), s.get("items"),
                      s.get("additionalProperties")]:
            if isinstance(child, dict):
                walk(child)
    walk(t.to_json_schema())


def test_schema_is_a_fresh_dict():
    t = parse_type("INT")
    t.to_json_schema()["type"] = "changed"
    assert t.to_json_schema() == {"type": "integer"}


# ---------------------------------------------------------------------------------------------
# conform: realistic answers through json_transform_strict

@pytest.mark.parametrize("type_text, answer, expected", [
    ("STRUCT<label: STRING, score: DOUBLE>", {"label": "spam", "score": 0.93}, {"label": "spam", "score": 0.93}),
    ("STRUCT<label: STRING, score: DOUBLE>", {"Label": "spam", "SCORE": "0.5", "why": "extra"},
     {"label": "spam", "score": 0.5}),
    ("STRUCT<label: STRING, score: DOUBLE>", {"label": None, "score": None}, {"label": None, "score": None}),
    ("STRUCT<a: INT, b: ARRAY<STRING>>", {"a": 1.0, "b": ["x", 2, True, None]},
     {"a": 1, "b": ["x", "2", "true", None]}),
    ("ARRAY<STRUCT<a: INT, b: ARRAY<STRING>>>", [{"a": "3", "b": []}, {"a": -4, "b": ["q"]}],
     [{"a": 3, "b": []}, {"a": -4, "b": ["q"]}]),
    ("MAP<STRING, ARRAY<DOUBLE>>", {"x": [1, 2.5, "3"], "y": []}, {"x": [1.0, 2.5, 3.0], "y": []}),
    ("MAP<INT, STRING>", {"1": "one", "2.0": "two", " 3 ": "three"}, {1: "one", 2: "two", 3: "three"}),
    ("MAP<BOOLEAN, INT>", {"TRUE": 1, "false": 0}, {True: 1, False: 0}),
    ("MAP<DATE, DOUBLE>", {"2024-01-31": 1}, {dt.date(2024, 1, 31): 1.0}),
    ("MAP<DECIMAL(5,1), INT>", {"2.25": 1}, {Decimal("2.3"): 1}),
    ("MAP<STRING, INT>", {"a": None}, {"a": None}),
    ("STRUCT<x: DECIMAL(10,2)>", {"x": 19.999}, {"x": Decimal("20.00")}),
    ("STRUCT<x: DECIMAL(10,2)>", {"x": "3.145"}, {"x": Decimal("3.15")}),
    ("DECIMAL(10,2)", -3.145, Decimal("-3.15")),
    ("DECIMAL(10,2)", 0.1 + 0.2, Decimal("0.30")),
    ("DECIMAL(38,10)", "1234567890123456789012345678.0123456789",
     Decimal("1234567890123456789012345678.0123456789")),
    ("DECIMAL(5,0)", 12345, Decimal("12345")),
    ("INT", 42, 42), ("INT", 42.0, 42), ("INT", "42", 42), ("INT", " -7 ", -7), ("INT", "1e3", 1000),
    ("INT", "12.0", 12),
    ("TINYINT", -128, -128), ("UTINYINT", 255, 255), ("SMALLINT", 32767, 32767),
    ("BIGINT", 2**63 - 1, 2**63 - 1), ("UBIGINT", 2**64 - 1, 2**64 - 1),
    ("HUGEINT", -2**127, -2**127), ("UHUGEINT", str(2**128 - 1), 2**128 - 1),
    ("DOUBLE", 3, 3.0), ("DOUBLE", "2.5e-3", 0.0025), ("DOUBLE", -0.5, -0.5),
    ("FLOAT", 0.5, 0.5), ("FLOAT", "1.25", 1.25),
    ("BOOLEAN", True, True), ("BOOLEAN", "FALSE", False), ("BOOLEAN", " true ", True),
    ("STRING", "hello", "hello"), ("STRING", 12, "12"), ("STRING", 1.5, "1.5"), ("STRING", False, "false"),
    ("STRING", {"a": [1, "é"]}, '{"a":[1,"é"]}'), ("STRING", [1, 2], "[1,2]"),
    ("DATE", "2024-02-29", dt.date(2024, 2, 29)), ("DATE", "2024-02-29T00:00:00Z", dt.date(2024, 2, 29)),
    ("TIMESTAMP", "2024-02-03T10:11:12", dt.datetime(2024, 2, 3, 10, 11, 12)),
    ("TIMESTAMP", "2024-02-03 10:11:12.5", dt.datetime(2024, 2, 3, 10, 11, 12, 500000)),
    ("TIMESTAMP", "2024-02-03T10:11:12+02:00", dt.datetime(2024, 2, 3, 8, 11, 12)),
    ("TIMESTAMP", "2024-02-03T10:11Z", dt.datetime(2024, 2, 3, 10, 11)),
    ("TIMESTAMP", "2024-02-03", dt.datetime(2024, 2, 3)),
    ("TIME", "09:30", dt.time(9, 30)), ("TIME", "23:59:59.25", dt.time(23, 59, 59, 250000)),
    ("UUID", "6BA7B810-9DAD-11D1-80B4-00C04FD430C8", uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")),
    ("UUID", "{6ba7b8109dad11d180b400c04fd430c8}", uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")),
    ("INT[3]", [1, "2", 3.0], (1, 2, 3)),
    ("ARRAY<INT>", [], []),
    ("STRUCT<a: INT>", None, None),
    ("STRUCT<`my field`: INT, `from`: STRING>", {"My Field": 1, "from": "x"}, {"my field": 1, "from": "x"}),
])
def test_conform_round_trips_through_duckdb(duck, type_text, answer, expected):
    t = parse_type(type_text)
    value = conform(answer, t)
    json.dumps(value)  # JSON-ready
    assert transform(duck, value, t) == expected


def test_timestamptz_keeps_the_instant(duck):
    t = parse_type("TIMESTAMPTZ")
    value = conform("2024-02-03T10:11:12+02:00", t)
    got = duck.execute("SELECT json_transform_strict(?, '\"TIMESTAMPTZ\"')::VARCHAR",
                       [json.dumps(value)]).fetchall()[0][0]
    assert got == "2024-02-03 08:11:12+00"


@pytest.mark.parametrize("type_text, answer, message", [
    ("STRUCT<label: STRING, score: DOUBLE>", {"label": "x", "score": "high"},
     "field 'score': expected DOUBLE, got \"high\""),
    ("STRUCT<label: STRING, score: DOUBLE>", {"label": "x"}, "field 'score': missing"),
    ("STRUCT<a: STRUCT<b: ARRAY<INT>>>", {"a": {"b": [1, "x"]}}, "field 'a.b[1]': expected INTEGER, got \"x\""),
    ("STRUCT<a: INT>", [1], "expected a JSON object, got [1]"),
    ("STRUCT<a: INT>", "{\"a\": 1}", "expected a JSON object"),
    ("ARRAY<INT>", {"a": 1}, "expected a JSON array"),
    ("ARRAY<INT>", "1,2", "expected a JSON array"),
    ("INT[3]", [1, 2], "expected 3 elements, got 2"),
    ("STRUCT<v: INT[2]>", {"v": [1, 2, 3]}, "field 'v': expected 2 elements, got 3"),
    ("INT", True, "expected INTEGER, got true"),
    ("INT", 1.5, "not a whole number"),
    ("INT", "1.5", "not a whole number"),
    ("INT", "ten", "expected INTEGER, got \"ten\""),
    ("INT", "1_000", "expected INTEGER"),
    ("INT", 2**31, "out of range -2147483648..2147483647"),
    ("TINYINT", 128, "out of range"),
    ("UTINYINT", -1, "out of range"),
    ("UBIGINT", 2**64, "out of range"),
    ("BIGINT", 1e20, "out of range"),
    ("BIGINT", "1e999999999", "out of range"),
    ("INT", float("nan"), "expected INTEGER, got NaN"),
    ("DOUBLE", float("inf"), "out of range"),
    ("DOUBLE", "1e400", "out of range"),
    ("DOUBLE", 10**400, "out of range"),
    ("DOUBLE", "nan", "expected DOUBLE"),
    ("DOUBLE", False, "expected DOUBLE, got false"),
    ("DOUBLE", [1.0], "expected DOUBLE"),
    ("FLOAT", 1e39, "out of range"),
    ("DECIMAL(5,2)", 1000, "too many digits"),
    ("DECIMAL(5,2)", 999.999, "too many digits"),
    ("DECIMAL(5,2)", "1e10", "too many digits"),
    ("DECIMAL(5,2)", "abc", "expected DECIMAL(5,2)"),
    ("DECIMAL(5,2)", True, "expected DECIMAL(5,2)"),
    ("BOOLEAN", "yes", "expected BOOLEAN, got \"yes\""),
    ("BOOLEAN", 1, "expected BOOLEAN, got 1"),
    ("DATE", "2024-02-30", "expected DATE"),
    ("DATE", "31/01/2024", "ISO-8601"),
    ("DATE", "20240131", "ISO-8601"),
    ("DATE", "2024-01-31T10:00:00", "time of day"),
    ("DATE", 20240131, "expected DATE"),
    ("TIMESTAMP", "yesterday", "expected TIMESTAMP"),
    ("TIMESTAMP", "2024-01-31T25:00:00", "expected TIMESTAMP"),
    ("TIME", "9:30", "expected TIME"),
    ("TIME", "24:00", "expected TIME"),
    ("UUID", "not-a-uuid", "expected UUID"),
    ("UUID", 5, "expected UUID"),
    ("MAP<INT, STRING>", {"x": "a"}, "key \"x\": expected INTEGER, got \"x\""),
    ("MAP<INT, STRING>", {"1": "a", "1.0": "b"}, "key \"1.0\" repeats another key"),
    ("MAP<STRING, INT>", {"a": "b"}, "field '[\"a\"]': expected INTEGER, got \"b\""),
    ("STRUCT<m: MAP<STRING, INT>>", {"m": {"k": "v"}}, "field 'm[\"k\"]': expected INTEGER"),
    ("STRUCT<m: MAP<INT, INT>>", {"m": {"k": 1}}, "field 'm': key \"k\": expected INTEGER"),
    ("MAP<STRING, INT>", [["a", 1]], "expected a JSON object"),
])
def test_conform_errors(type_text, answer, message):
    with pytest.raises(OutputError) as e:
        conform(answer, parse_type(type_text))
    assert message in str(e.value)


def test_missing_field_names_what_was_there():
    with pytest.raises(OutputError) as e:
        conform({"lbl": "x", "score": 1}, parse_type("STRUCT<label: STRING, score: DOUBLE>"))
    assert str(e.value) == "field 'label': missing (the answer has [\"lbl\", \"score\"])"


def test_error_shows_only_the_start_of_a_long_value():
    with pytest.raises(OutputError) as e:
        conform("x" * 5000, parse_type("INT"))
    assert len(str(e.value)) < 200


def test_conform_uses_the_given_path():
    with pytest.raises(OutputError, match=r"^field 'row\.score': expected DOUBLE"):
        conform("high", DOUBLE, "row.score")


def test_exact_key_wins_over_case_insensitive_match():
    t = parse_type("STRUCT<a: INT>")
    assert conform({"A": 1, "a": 2}, t) == {"a": 2}


def test_conform_refuses_what_duckdb_alone_would_quietly_change(duck):
    # json_transform_strict by itself rounds 1.5 to 2 and reads true as 1 ...
    assert transform(duck, 1.5, INTEGER) == 2
    assert transform(duck, True, INTEGER) == 1
    for answer in (1.5, True):
        with pytest.raises(OutputError):
            conform(answer, INTEGER)
    # ... and drops a timestamp's offset, which conform applies instead.
    t = parse_type("TIMESTAMP")
    answer = "2024-02-03T10:11:12+02:00"
    assert transform(duck, answer, t) == dt.datetime(2024, 2, 3, 10, 11, 12)
    assert transform(duck, conform(answer, t), t) == dt.datetime(2024, 2, 3, 8, 11, 12)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_INT_RANGES)), st.one_of(
    st.integers(-2**130, 2**130), st.sampled_from([-2**127, 2**127 - 1, 2**64 - 1, 2**63, -2**63 - 1])))
def test_integer_ranges_match_duckdb(duck, name, n):
    t = S(name)
    try:
        duck_value = duck.execute("SELECT json_transform_strict(?, to_json(?::VARCHAR))",
                                  [str(n), name]).fetchall()[0][0]
    except duckdb.Error:
        duck_value = None
    try:
        ours = conform(n, t)
    except OutputError:
        ours = None
    assert ours == duck_value
    if ours is not None:
        assert conform(str(n), t) == n


# ---------------------------------------------------------------------------------------------
# conform, property: any well-formed answer for any type goes through json_transform_strict

def _answers(t: SqlType):
    if t.kind in ("list", "array"):
        size = t.size if t.kind == "array" else None
        return st.lists(_answers(t.element), min_size=size or 0, max_size=size or 3)
    if t.kind == "struct":
        return st.fixed_dictionaries({name: _answers(ft) for name, ft in t.fields})
    if t.kind == "map":
        # Keys distinct as values, as DuckDB compares them (0.0 and -0.0 are one key).
        pairs = st.lists(st.tuples(_scalar_answers(t.key), _answers(t.value)), max_size=3,
                         unique_by=lambda pair: pair[0])
        return pairs.map(lambda ps: {k if isinstance(k, str) else json.dumps(k): v for k, v in ps})
    return st.one_of(st.none(), _scalar_answers(t))


def _scalar_answers(t: SqlType):
    name = t.name
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        return st.integers(low, high)
    if name == "VARCHAR":
        return st.text(max_size=10)
    if name == "BOOLEAN":
        return st.booleans()
    if name in ("FLOAT", "DOUBLE"):
        return st.floats(allow_nan=False, allow_infinity=False, width=32 if name == "FLOAT" else 64)
    if name == "DECIMAL":
        bound = 10 ** t.precision - 1
        return st.integers(-bound, bound).map(lambda n: f"{n}e-{t.scale}")
    if name == "DATE":
        return st.dates().map(dt.date.isoformat)
    if name == "TIME":
        return st.times().map(dt.time.isoformat)
    if name == "TIMESTAMP":
        return st.datetimes().map(dt.datetime.isoformat)
    if name == "TIMESTAMPTZ":
        return st.datetimes(min_value=dt.datetime(1900, 1, 1), timezones=st.just(dt.timezone.utc)).map(
            dt.datetime.isoformat)
    assert name == "UUID", name
    return st.uuids().map(str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_well_formed_answers_always_transform(duck, data):
    t = data.draw(_types(max_leaves=6))
    answer = data.draw(_answers(t))
    value = conform(answer, t)
    duck.execute("SELECT json_transform_strict(?, to_json(?::VARCHAR))::VARCHAR",
                 [json.dumps(value), t.to_duckdb()]).fetchall()[0]


# ---------------------------------------------------------------------------------------------
# parse_output

POINT = parse_type("STRUCT<x: INT, y: INT>")


@pytest.mark.parametrize("text", [
    '{"x": 1, "y": 2}',
    '```json\n{"x": 1, "y": 2}\n```',
    '  ```JSON\n{"x": 1, "y": 2}```  ',
    '```\n{"x": 1, "y": 2}\n```\n',
    '```{"x": 1, "y": 2}```',
])
def test_parse_output_reads_json_with_or_without_a_fence(text):
    assert parse_output(text, POINT) == {"x": 1, "y": 2}


def test_parse_output_keeps_varchar_as_is():
    text = '```json\n{"x": 1}\n```'
    assert parse_output(text, VARCHAR) == text
    assert parse_output("  spaced  ", parse_type("STRING")) == "  spaced  "


@pytest.mark.parametrize("type_text, text, expected", [
    ("INT", "42", 42), ("INT", " 42\n", 42), ("INT", '"42"', 42), ("DOUBLE", "0.25", 0.25),
    ("DATE", "2024-01-31", "2024-01-31"), ("DATE", '"2024-01-31"', "2024-01-31"),
    ("BOOLEAN", "True", True), ("BOOLEAN", "false", False),
    ("ARRAY<STRING>", '```json\n["a", "b"]\n```', ["a", "b"]),
    ("INT", "null", None),
])
def test_parse_output_scalars(type_text, text, expected):
    assert parse_output(text, parse_type(type_text)) == expected


def test_parse_output_rejects_text_that_is_not_json():
    text = "Sure! Here is the answer: x is one and y is two. " * 20
    with pytest.raises(OutputError) as e:
        parse_output(text, POINT)
    message = str(e.value)
    assert "not JSON" in message and "Sure! Here is the answer" in message
    assert len(message) < 320


@pytest.mark.parametrize("type_text, text, message", [
    ("DOUBLE", "high", 'expected DOUBLE, got "high"'),
    ("DOUBLE", "NaN", "expected DOUBLE, got NaN"),
    ("INT", "", 'expected INTEGER, got ""'),
    ("ARRAY<INT>", "[1, 2", "not JSON"),
    ("STRUCT<x: INT, y: INT>", '{"x": 1}', "field 'y': missing"),
])
def test_parse_output_errors(type_text, text, message):
    with pytest.raises(OutputError) as e:
        parse_output(text, parse_type(type_text))
    assert message in str(e.value)
