"""SQL type strings for ai_query's `responseFormat` and `returnType`.

A type may be written in DuckDB spelling (``STRUCT(label VARCHAR, score DOUBLE)``, ``VARCHAR[]``,
``MAP(VARCHAR, INTEGER)``, ``INTEGER[3]``) or in Spark/Databricks DDL (``STRUCT<label: STRING,
score: DOUBLE>``, ``ARRAY<STRING>``, ``MAP<STRING, INT>``, ``LONG``, ``BYTE``). This module

* parses either spelling into a `SqlType` tree (`parse_type`), which renders itself as canonical
  DuckDB text (`SqlType.to_duckdb`) and as a strict-mode JSON schema for the model
  (`SqlType.to_json_schema`);
* checks a model's answer and converts it into JSON that DuckDB's ``json_transform_strict`` turns
  into the declared value (`conform`, `parse_output`); an answer that does not fit raises
  `OutputError` instead of becoming NULL;
* builds a SQL expression that converts a type string to DuckDB spelling with string functions
  only (`ddl_to_duckdb_sql`), so a macro can fold it at bind time, where no Python UDF can run.

Grammar (keywords and type names in any case, whitespace allowed between any two tokens)::

    type   := base ( '[' ']' | '[' N ']' )*              list, fixed-size array (1 <= N <= 100000)
    base   := ARRAY '<' type '>'
            | MAP '<' type ',' type '>'                  | MAP '(' type ',' type ')'
            | STRUCT '<' field (',' field)* '>'          | STRUCT '(' field (',' field)* ')'
            | DECIMAL [ '(' P [',' S] ')' ]              also DEC, NUMERIC; bare DECIMAL is (18,3)
            | VARCHAR [ '(' N ')' ]                      also STRING, TEXT, CHAR, BPCHAR; N ignored
            | scalar                                     see _ALIASES
    field  := name (':' | whitespace) type [NOT NULL] [COMMENT 'text']    (both accepted, ignored)
    name   := [A-Za-z0-9_]+ | `quoted` | "quoted"

Two limits keep the SQL conversion and this parser in agreement: a quoted name may hold any
character except `` ` " ' < > ( ) [ ] , `` (the SQL finds structure with regular expressions), and
``<...>`` generics nest at most `MAX_GENERIC_DEPTH` deep (one rewriting pass per level). MAP keys
must be scalars, since JSON object keys are strings. BLOB (BINARY) is refused: a model answers
text.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext

from ._errors import ArgumentError, OutputError
from ._scrub import shorten

__all__ = ["SqlType", "parse_type", "conform", "parse_output", "check_enums", "forbidden_in_name",
           "ddl_to_duckdb_sql", "MAX_GENERIC_DEPTH"]

MAX_GENERIC_DEPTH = 6
_MAX_ARRAY_SIZE = 100_000        # DuckDB's limit for fixed-size ARRAY
_FORBIDDEN_IN_NAMES = set("`\"'<>()[],")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_INT_RANGES = {
    "TINYINT": (-2**7, 2**7 - 1), "SMALLINT": (-2**15, 2**15 - 1),
    "INTEGER": (-2**31, 2**31 - 1), "BIGINT": (-2**63, 2**63 - 1),
    "HUGEINT": (-2**127, 2**127 - 1),
    "UTINYINT": (0, 2**8 - 1), "USMALLINT": (0, 2**16 - 1), "UINTEGER": (0, 2**32 - 1),
    "UBIGINT": (0, 2**64 - 1), "UHUGEINT": (0, 2**128 - 1),
}
_FLOAT_MAX = 3.4028234663852886e38

# Canonical DuckDB name -> other spellings. Every alias here is one DuckDB itself accepts for the
# same type (the SQL conversion passes names through), except BYTE, which the SQL maps.
_SPELLINGS = {
    "VARCHAR": ("STRING", "TEXT", "CHAR", "BPCHAR"),
    "BOOLEAN": ("BOOL", "LOGICAL"),
    "TINYINT": ("BYTE", "INT1"), "SMALLINT": ("SHORT", "INT2"),
    "INTEGER": ("INT", "INT4", "SIGNED"), "BIGINT": ("LONG", "INT8"), "HUGEINT": ("INT128",),
    "UTINYINT": ("UINT8",), "USMALLINT": ("UINT16",), "UINTEGER": ("UINT32",),
    "UBIGINT": ("UINT64",), "UHUGEINT": ("UINT128",),
    "FLOAT": ("REAL", "FLOAT4"), "DOUBLE": ("FLOAT8",),
    "DECIMAL": ("DEC", "NUMERIC"),
    "DATE": (), "TIME": (), "TIMESTAMP": ("DATETIME",), "TIMESTAMPTZ": (), "UUID": (),
    "BLOB": ("BINARY", "BYTEA", "VARBINARY"),     # known only to be refused with a reason
}
_ALIASES = {alias: canon for canon, more in _SPELLINGS.items() for alias in (canon, *more)}

_SCHEMAS = {
    "VARCHAR": {"type": "string"}, "BOOLEAN": {"type": "boolean"},
    **{name: {"type": "integer"} for name in _INT_RANGES},
    "FLOAT": {"type": "number"}, "DOUBLE": {"type": "number"}, "DECIMAL": {"type": "number"},
    "DATE": {"type": "string", "format": "date"},
    # JSON Schema's "time" format demands a UTC offset, which TIME has no room for.
    "TIME": {"type": "string", "pattern": "^[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,6})?)?$"},
    "TIMESTAMP": {"type": "string", "format": "date-time"},
    "TIMESTAMPTZ": {"type": "string", "format": "date-time"},
    "UUID": {"type": "string", "format": "uuid"},
}


@dataclass(frozen=True)
class SqlType:
    """One node of a parsed type: a scalar, LIST (``T[]``), ARRAY (``T[n]``), STRUCT or MAP."""

    kind: str                                      # "scalar" | "list" | "array" | "struct" | "map"
    name: str = ""                                 # scalar: canonical DuckDB name, e.g. "INTEGER"
    precision: int = 0                             # DECIMAL only
    scale: int = 0                                 # DECIMAL only
    element: SqlType | None = None                 # list and array
    size: int = 0                                  # array
    fields: tuple[tuple[str, SqlType], ...] = ()   # struct, in declared order
    key: SqlType | None = None                     # map
    value: SqlType | None = None                   # map

    @property
    def is_struct(self) -> bool:
        return self.kind == "struct"

    def to_duckdb(self) -> str:
        """Canonical DuckDB spelling; field names are always quoted so any name works."""
        if self.kind == "list":
            return f"{self.element.to_duckdb()}[]"
        if self.kind == "array":
            return f"{self.element.to_duckdb()}[{self.size}]"
        if self.kind == "struct":
            inner = ", ".join(f"{sql_identifier(name)} {t.to_duckdb()}"
                              for name, t in self.fields)
            return f"STRUCT({inner})"
        if self.kind == "map":
            return f"MAP({self.key.to_duckdb()}, {self.value.to_duckdb()})"
        if self.name == "DECIMAL":
            return f"DECIMAL({self.precision},{self.scale})"
        return self.name

    def to_json_schema(self) -> dict:
        """JSON schema for the model, strict-mode style: objects list every property as required
        and allow no others. A MAP becomes an object whose `additionalProperties` is the value
        schema: valid JSON Schema, though some strict-mode providers refuse it."""
        if self.kind in ("list", "array"):
            schema = {"type": "array", "items": self.element.to_json_schema()}
            if self.kind == "array":
                schema["minItems"] = schema["maxItems"] = self.size
            return schema
        if self.kind == "struct":
            return {"type": "object",
                    "properties": {name: t.to_json_schema() for name, t in self.fields},
                    "required": [name for name, _ in self.fields],
                    "additionalProperties": False}
        if self.kind == "map":
            return {"type": "object", "additionalProperties": self.value.to_json_schema()}
        return dict(_SCHEMAS[self.name])


# --------------------------------------------------------------------------------------------
# Parsing

_TOKEN = re.compile(r"""
    (?P<space>[ \t\n\r\f]+)                     # the whitespace RE2's \s knows, for the SQL's sake
  | (?P<string>(?:'(?:[^'\\]|\\.)*')+)          # a COMMENT text, Spark escapes, 'a''b' joined
  | (?P<quoted>`[^`]*`|"[^"]*")
  | (?P<word>[A-Za-z0-9_]+)
  | (?P<punct>[<>()\[\],:])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int
    spaced: bool                                   # whitespace right before it


def _tokenize(text: str, fail) -> list[_Token]:
    tokens, pos, spaced = [], 0, False
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            fail(f"unexpected character {text[pos]!r} at position {pos}")
        if m.lastgroup == "space":
            spaced = True
        else:
            tokens.append(_Token(m.lastgroup, m.group(), pos, spaced))
            spaced = False
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str, argument: str):
        self.text, self.argument = text, argument
        self.tokens = _tokenize(text, self.fail)
        self.i = 0
        self.depth = 0                             # nesting of <...> generics

    def fail(self, problem: str):
        shown = self.text if len(self.text) <= 200 else self.text[:200] + "..."
        raise ArgumentError(f"{self.argument}: cannot read type '{shown}': {problem}")

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> _Token | None:
        tok = self.peek()
        if tok is not None:
            self.i += 1
        return tok

    def take_kind(self, kinds: tuple[str, ...], what: str) -> _Token:
        tok = self.peek()
        if tok is None or tok.kind not in kinds:
            self.fail(f"expected {what} {self.where()}")
        self.i += 1
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind in ("punct", "word") and tok.text.upper() == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str) -> None:
        if not self.accept(text):
            self.fail(f"expected {what} {self.where()}")

    def where(self) -> str:
        tok = self.peek()
        return "at the end" if tok is None else f"at '{tok.text}' (position {tok.pos})"

    def number(self, what: str) -> int:
        tok = self.peek()
        if tok is None or not tok.text.isdigit():
            self.fail(f"expected {what} {self.where()}")
        self.i += 1
        return int(tok.text)

    def parse(self) -> SqlType:
        if not self.tokens:
            self.fail("it is empty")
        t = self.type()
        if self.peek() is not None:
            self.fail(f"unexpected '{self.peek().text}' at position {self.peek().pos}")
        return t

    def type(self) -> SqlType:
        tok = self.take_kind(("word",), "a type")
        word = tok.text.upper()
        if word == "ARRAY":
            self.open_generic("ARRAY<element type>")
            t = SqlType("list", element=self.type())
            self.close_generic()
        elif word == "MAP":
            close = self.open_either("MAP<key type, value type>")
            key = self.type()
            if key.kind != "scalar":
                self.fail(f"MAP keys must be a scalar type, not {key.to_duckdb()}")
            self.expect(",", "',' between the MAP key and value types")
            t = SqlType("map", key=key, value=self.type())
            self.close(close)
        elif word == "STRUCT":
            close = self.open_either("STRUCT<name: type, ...>")
            t = SqlType("struct", fields=self.fields())
            self.close(close)
        else:
            t = self.scalar(tok)
        while self.accept("["):
            if self.accept("]"):
                t = SqlType("list", element=t)
                continue
            size = self.number("']' or an array size")
            if not 1 <= size <= _MAX_ARRAY_SIZE:
                self.fail(f"array size {size} is not between 1 and {_MAX_ARRAY_SIZE}")
            self.expect("]", "']'")
            t = SqlType("array", element=t, size=size)
        return t

    def open_generic(self, usage: str) -> None:
        self.expect("<", f"'<' as in {usage}")
        self.depth += 1
        if self.depth > MAX_GENERIC_DEPTH:
            self.fail(f"types nest more than {MAX_GENERIC_DEPTH} levels of <...> deep")

    def close_generic(self) -> None:
        self.expect(">", "'>'")
        self.depth -= 1

    def open_either(self, usage: str) -> str:
        if self.accept("("):
            return ")"
        self.open_generic(usage)
        return ">"

    def close(self, bracket: str) -> None:
        if bracket == ">":
            self.close_generic()
        else:
            self.expect(")", "')'")

    def fields(self) -> tuple[tuple[str, SqlType], ...]:
        fields, seen = [], set()
        while True:
            name = self.field_name()
            if not self.accept(":") and not (self.peek() is not None and self.peek().spaced):
                self.fail(f"expected ':' or a space after field name '{name}' {self.where()}")
            field_type = self.type()
            self.modifiers()
            folded = name.translate(_ASCII_LOWER)   # DuckDB's test: "É" and "é" may coexist
            if folded in seen:
                self.fail(f"field name '{name}' appears twice")
            seen.add(folded)
            fields.append((name, field_type))
            if not self.accept(","):
                return tuple(fields)

    def field_name(self) -> str:
        tok = self.take_kind(("word", "quoted"), "a field name")
        if tok.kind == "word":
            return tok.text
        name = tok.text[1:-1]
        if not name:
            self.fail(f"empty field name at position {tok.pos}")
        bad = forbidden_in_name(name)
        if bad:
            self.fail(f"field name {tok.text} contains {' '.join(bad)}, which field names may not")
        return name

    def modifiers(self) -> None:
        """Skip Spark's optional NOT NULL and COMMENT '...' after a field's type."""
        tok = self.peek()
        if tok is not None and tok.spaced and self.accept("NOT"):
            tok = self.take()
            if tok is None or not tok.spaced or tok.text.upper() != "NULL":
                self.fail("expected NULL after NOT")
        tok = self.peek()
        if tok is not None and tok.spaced and self.accept("COMMENT"):
            tok = self.take()
            if tok is None or not tok.spaced or tok.kind != "string":
                self.fail("expected a quoted text after COMMENT")

    def scalar(self, tok: _Token) -> SqlType:
        word = tok.text.upper()
        canon = _ALIASES.get(word)
        if canon is None:
            self.fail(f"unknown type {tok.text} (expected e.g. STRING, INT, DOUBLE, BOOLEAN, "
                      "ARRAY<...>, STRUCT<...>)")
        if canon == "BLOB":
            # Refused here, before any request: no answer of a text model could ever fit.
            self.fail(f"{tok.text} values cannot come from a model's text answer; use STRING")
        if canon == "DECIMAL":
            precision, scale = 18, 3               # DuckDB's default, which the SQL path gets too
            if self.accept("("):
                precision, scale = self.number("a DECIMAL precision"), 0
                if self.accept(","):
                    scale = self.number("a DECIMAL scale")
                self.expect(")", "')'")
            if not 1 <= precision <= 38 or scale > precision:
                self.fail(f"DECIMAL({precision},{scale}) needs 1 <= precision <= 38 "
                          "and scale <= precision")
            return SqlType("scalar", "DECIMAL", precision, scale)
        if self.at("("):
            if canon != "VARCHAR":
                self.fail(f"{tok.text} takes no parameters")
            self.take()
            self.number("a length")
            self.expect(")", "')'")
        return SqlType("scalar", canon)


def forbidden_in_name(name: str) -> list[str]:
    """The characters of `name` that a field name may not hold (see the module docstring)."""
    return sorted(_FORBIDDEN_IN_NAMES.intersection(name))


def parse_type(text: str, *, argument: str = "returnType") -> SqlType:
    """Parse a type string in DuckDB or Spark spelling; ArgumentError names `argument`."""
    if not isinstance(text, str):
        raise ArgumentError(f"{argument}: expected a type string, got {type(text).__name__}")
    return _Parser(text, argument).parse()


# --------------------------------------------------------------------------------------------
# Making answers fit

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TIME = r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
_DATETIME = re.compile(rf"[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}"
                       rf"(?:[T ]{_TIME}(?:Z|[+-][0-9]{{2}}(?::?[0-9]{{2}})?)?)?")
_TIME_ONLY = re.compile(_TIME)
_FENCE = re.compile(r"\s*```(?:json)?\s*(.*?)\s*```\s*", re.DOTALL | re.IGNORECASE)


def _show(value, limit: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


def _fail(path: str, problem: str):
    raise OutputError(f"field '{path}': {problem}" if path else problem)


def _expected(value, t: SqlType, path: str, why: str = ""):
    _fail(path, f"expected {t.to_duckdb()}, got {_show(value)}" + (f" ({why})" if why else ""))


def _decimal(value, t: SqlType, path: str) -> Decimal:
    """A finite number, or a numeric string, as an exact Decimal."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))                # shortest repr: 0.1 stays 0.1
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return Decimal(value.strip())
    _expected(value, t, path)


def _integer(value, t: SqlType, path: str) -> int:
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        _expected(value, t, path, "not a whole number")
    number = _decimal(value, t, path)
    low, high = _INT_RANGES[t.name]
    if not low <= number <= high:                  # before int(): "1e999999" is a valid Decimal
        _expected(value, t, path, f"out of range {low}..{high}")
    if number != number.to_integral_value():
        _expected(value, t, path, "not a whole number")
    return int(number)


def _float(value, t: SqlType, path: str) -> float:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
    else:
        _expected(value, t, path)
    if not math.isfinite(number) or (t.name == "FLOAT" and abs(number) > _FLOAT_MAX):
        _expected(value, t, path, "out of range")
    return number


def _to_decimal(value, t: SqlType, path: str) -> str:
    """Round to the declared scale, as a cast would (model floats carry noise such as
    0.30000000000000004); refuse values whose integer part does not fit. Returned as a string,
    which json_transform_strict reads exactly, unlike a binary float."""
    number = _decimal(value, t, path)
    limit = Decimal(10) ** (t.precision - t.scale)          # a power of ten: exact
    # copy_abs, unlike abs(), does not round to the context's 28 digits.
    if number.copy_abs() < limit:                           # first: cheap even for 1e999999
        with localcontext() as ctx:
            ctx.prec = 80                                   # room for DECIMAL(38,s) and more
            rounded = number.quantize(Decimal(1).scaleb(-t.scale), rounding=ROUND_HALF_UP)
        if rounded.copy_abs() < limit:
            return format(rounded, "f")
    _expected(value, t, path, "too many digits")


def _boolean(value, t: SqlType, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    _expected(value, t, path)


def _varchar(value, t: SqlType, path: str) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _datetime(value, t: SqlType, path: str) -> _dt.datetime:
    text = value.strip() if isinstance(value, str) else None
    if text is None or not _DATETIME.fullmatch(text):
        _expected(value, t, path, "ISO-8601 text such as 2024-01-31 or 2024-01-31T09:30:00Z")
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError as e:
        _expected(value, t, path, str(e))


def _date(value, t: SqlType, path: str) -> str:
    moment = _datetime(value, t, path)
    if moment.time() != _dt.time():
        _expected(value, t, path, "a date cannot hold a time of day")
    return moment.date().isoformat()


def _timestamp(value, t: SqlType, path: str) -> str:
    moment = _datetime(value, t, path)
    # DuckDB would drop an offset without applying it; a TIMESTAMP is taken as UTC instead.
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return moment.isoformat(sep=" ")


def _timestamptz(value, t: SqlType, path: str) -> str:
    moment = _datetime(value, t, path)
    # In UTC, one instant has one spelling (MAP keys compare equal as text); without an offset
    # DuckDB applies the session's time zone.
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.timezone.utc)
    return moment.isoformat(sep=" ")


def _time(value, t: SqlType, path: str) -> str:
    if not isinstance(value, str) or not _TIME_ONLY.fullmatch(value.strip()):
        _expected(value, t, path, "text such as 09:30 or 09:30:15")
    try:
        return _dt.time.fromisoformat(value.strip()).isoformat()
    except ValueError as e:
        _expected(value, t, path, str(e))


def _uuid(value, t: SqlType, path: str) -> str:
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            pass
    _expected(value, t, path)


_SCALAR_CONFORM = {
    "VARCHAR": _varchar, "BOOLEAN": _boolean,
    **{name: _integer for name in _INT_RANGES},
    "FLOAT": _float, "DOUBLE": _float, "DECIMAL": _to_decimal,
    "DATE": _date, "TIME": _time, "TIMESTAMP": _timestamp, "TIMESTAMPTZ": _timestamptz,
    "UUID": _uuid,
}


def _key_text(key) -> str:
    """A conformed MAP key as the JSON object key DuckDB casts back to the key type."""
    return key if isinstance(key, str) else json.dumps(key)


def conform(value, t: SqlType, path: str = ""):
    """Check `value` (as json.loads gave it) against `t` and return JSON-ready data that
    ``json_transform_strict(json.dumps(result), to_json(t.to_duckdb()))`` turns into the
    intended value. Raises OutputError naming the field path and what is wrong."""
    if value is None:
        return None
    if t.kind == "scalar":
        return _SCALAR_CONFORM[t.name](value, t, path)
    if t.kind in ("list", "array"):
        if not isinstance(value, list):
            _fail(path, f"expected a JSON array, got {_show(value)}")
        if t.kind == "array" and len(value) != t.size:
            _fail(path, f"expected {t.size} elements, got {len(value)}")
        return [conform(item, t.element, f"{path}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        _fail(path, f"expected a JSON object, got {_show(value)}")
    if t.kind == "map":
        result, seen = {}, set()
        for key, item in value.items():
            try:
                converted = conform(key, t.key)
            except OutputError as e:
                _fail(path, f"key {_show(key)}: {e}")
            # Compared as values: "1" and "1.0", or 0.0 and -0.0, are one key to DuckDB too.
            if converted in seen:
                _fail(path, f"key {_show(key)} repeats another key")
            seen.add(converted)
            result[_key_text(converted)] = conform(item, t.value, f"{path}[{_show(key)}]")
        return result
    result = {}
    for name, field_type in t.fields:
        sub = f"{path}.{name}" if path else name
        if name in value:
            item = value[name]
        else:
            # Models sometimes change a key's case. Keys not declared are left out.
            match = next((k for k in value if str(k).casefold() == name.casefold()), None)
            if match is None:
                _fail(sub, f"missing (the answer has {_show(list(value))})")
            item = value[match]
        result[name] = conform(item, field_type, sub)
    return result


def check_enums(value, schema, path: str = "") -> None:
    """Every value of an answer (`value`, parsed) that its JSON schema lists the allowed values of
    (`enum`), at any depth, is one of them: OutputError otherwise, never coerced. ai_classify,
    ai_analyze_sentiment and ai_extract's enum fields rely on this."""
    if not isinstance(schema, dict):
        return
    allowed = schema.get("enum")
    if isinstance(allowed, list) and value not in allowed:
        name = f"the answer's {path!r}" if path else "the answer"
        raise OutputError(f"{name} is {shorten(repr(value), 200)}, not one of the allowed values "
                          f"{json.dumps(allowed, ensure_ascii=False)}")
    properties = schema.get("properties")
    if isinstance(value, dict) and isinstance(properties, dict):
        for name, sub in properties.items():
            if name in value:
                check_enums(value[name], sub, f"{path}.{name}" if path else name)
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        for i, item in enumerate(value):
            check_enums(item, items, f"{path}[{i}]")


def parse_output(text: str, t: SqlType):
    """The model's raw answer as a conformed value (see `conform`). A VARCHAR answer is kept as
    it is. Otherwise one surrounding markdown code fence is dropped and the text read as JSON;
    a scalar answer that is not JSON is taken as bare text (``2024-01-31``, ``true``)."""
    if t.kind == "scalar" and t.name == "VARCHAR":
        return text
    fenced = _FENCE.fullmatch(text)
    body = fenced.group(1) if fenced else text
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        if t.kind != "scalar":
            wanted = "an array" if t.kind in ("list", "array") else "an object"
            raise OutputError(f"expected JSON ({wanted}), got text that is not JSON: "
                              f"{_show(text, 200)}") from None
        value = body.strip()
    return conform(value, t)


# --------------------------------------------------------------------------------------------
# The same conversion in SQL

# Drop NOT NULL and COMMENT '...' after a field's type. Anchoring on the following , > ) keeps
# the words from matching inside a quoted field name.
_SQL_FIELD_TAIL = r"(?:\s+NOT\s+NULL)?(?:\s+COMMENT\s+(?:'(?:[^'\\]|\\.)*')+)?(\s*[,>)]|\s*$)"
# Quote every field name (one after STRUCT's bracket or a comma, followed by ':' or a space and
# then a type's first letter): makes keywords like `from` usable and turns `x` into "x". Matching
# quoted names whole keeps their content from being read as structure.
_SQL_FIELD_NAME = r"""([<(,]\s*)(?:(\w+)|`([^`]*)`|"([^"]*)")(?:\s*:\s*|\s+)([A-Za-z])"""
# One pass rewrites every innermost generic: STRUCT<x> -> STRUCT(x), MAP<x> -> MAP(x),
# ARRAY<x> -> x() which becomes x[] at the end (no valid type has "()" otherwise).
_SQL_GENERIC = r"ARRAY\s*<([^<>]*)>|(STRUCT|MAP)\s*<([^<>]*)>"
# BYTE is the one Spark name DuckDB lacks (STRING, INT, LONG, SHORT, BINARY are aliases there).
_SQL_BYTE = r"\bBYTE(\s*[),[]|\s*$)"


def sql_string(value: str) -> str:
    """A SQL string literal for `value` (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """A quoted SQL identifier for `name` (double quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def _regexp_replace(sql: str, pattern: str, replacement: str, options: str) -> str:
    return (f"regexp_replace({sql}, {sql_string(pattern)}, {sql_string(replacement)}, "
            f"'{options}')")


def ddl_to_duckdb_sql(arg: str) -> str:
    """A SQL expression, string functions only, converting the type string that SQL expression
    `arg` holds into DuckDB spelling; on a constant it folds at bind time. For every string
    `parse_type` accepts, DuckDB reads the result as `parse_type(...).to_duckdb()`."""
    # DuckDB 2.0 binds a macro's body when the macro is created, parameters still unknown; a
    # parameter handed straight to a string function then counts as non-constant and
    # json_transform refuses the macro, while `param || ''` passes (and changes no value).
    sql = _regexp_replace(f"({arg} || '')", _SQL_FIELD_TAIL, r"\1", "gi")
    sql = _regexp_replace(sql, _SQL_FIELD_NAME, r'\1"\2\3\4" \5', "g")
    for _ in range(MAX_GENERIC_DEPTH):
        sql = _regexp_replace(sql, _SQL_GENERIC, r"\1\2(\3)", "gi")
    sql = f"replace({sql}, '()', '[]')"
    return _regexp_replace(sql, _SQL_BYTE, r"TINYINT\1", "gi")
