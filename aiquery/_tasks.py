"""ai_classify and ai_extract: labels and typed schemas in, a typed column out.

Both keep their first form (`ai_classify(text, ['a', 'b'], multilabel => true)`,
`ai_extract(text, ['person', 'city'])`) and take Databricks' newer one: labels with descriptions,
a typed JSON schema, and an options argument (instructions, multilabel, confidence, rationale,
citations). From the constant arguments, `spec()` builds what ai_query needs: the instruction, the
JSON schema the model must follow, and the column's type. SQL gets them from `task_part`, a Python
function without side effects that DuckDB runs while planning (the type must be known then); the
UDF gets the same `Spec` and reshapes each answer into that type (`Spec.answer`).

Confidence is the probability the model gave the tokens of a value: exp(sum of their logprobs),
asked for with `"logprobs": true`. An answer without logprobs, or whose logprobs do not spell out
its text, has a NULL confidence.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from json.decoder import scanstring
from typing import Any

from ._errors import ArgumentError, OutputError
from ._sqltypes import SqlType, check_enums, conform, forbidden_in_name, parse_output

PARTS = ("instruction", "format", "type")
_CLASSIFY_OPTIONS = {"multilabel": bool, "instructions": str, "confidence": bool, "rationale": bool}
_EXTRACT_OPTIONS = {"instructions": str, "confidence": bool, "citations": bool}
# The option names of Databricks' job settings, taken as the short ones.
_ALIASES = {"enable_confidence_scores": "confidence", "enable_rationales": "rationale",
            "enable_citations": "citations"}
_TYPES = {  # ai_extract field types: the spellings accepted, the SQL type, the JSON schema type
    "string": ("VARCHAR", "string"), "str": ("VARCHAR", "string"), "text": ("VARCHAR", "string"),
    "integer": ("BIGINT", "integer"), "int": ("BIGINT", "integer"), "long": ("BIGINT", "integer"),
    "number": ("DOUBLE", "number"), "float": ("DOUBLE", "number"), "double": ("DOUBLE", "number"),
    "boolean": ("BOOLEAN", "boolean"), "bool": ("BOOLEAN", "boolean"),
}
_KINDS = "string, integer, number, boolean, enum, object, array"
_CONFIDENCE = SqlType("scalar", "DOUBLE")
_TEXT = SqlType("scalar", "VARCHAR")


def _decode(text: str | None, what: str) -> Any:
    """A to_json() text as a value; a string that holds JSON (a JSON literal in SQL) is read too."""
    if text is None:
        return None
    value = json.loads(text)
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ArgumentError(f"{what} is not valid JSON: {exc}") from None
    return value


def _flag(value: Any, name: str, function: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # map('multilabel', 'true')
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ArgumentError(f"{function}: option {name!r} must be true or false, got {value!r}")
    return value


def _options(raw: Any, known: dict[str, type], function: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ArgumentError(f"{function}: options must be a JSON object such as '{{\"instructions\": \"...\"}}', "
                            f"a struct or a map, got {raw!r}")
    out = {}
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ArgumentError(f"{function}: unknown option {key!r}{hint} (options: {', '.join(known)})")
        if value is None:
            continue
        if known[name] is bool:
            value = _flag(value, name, function)
        elif not isinstance(value, str):
            raise ArgumentError(f"{function}: option {name!r} must be a string, got {value!r}")
        out[name] = value
    return out


def _name(name: Any, function: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError(f"{function}: {what} must be non-empty strings, got {name!r}")
    bad = forbidden_in_name(name)
    if bad:
        raise ArgumentError(f"{function}: {what} {name!r} contains {' '.join(bad)}, which names may not")
    return name


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}


def _object(properties: dict[str, dict]) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _struct(fields: list[tuple[str, SqlType]]) -> SqlType:
    return SqlType("struct", fields=tuple(fields))


@dataclass(frozen=True)
class Spec:
    """What one call of a task function sends and returns."""

    instruction: str
    schema: dict                 # the JSON schema of the model's answer
    answer_type: SqlType         # that answer as SQL sees it, to check it
    output_type: SqlType         # the column
    logprobs: bool               # confidence was asked for

    @property
    def response_format(self) -> dict:
        return _schema_format(self.schema)

    def part(self, name: str) -> str:
        if name == "instruction":
            return self.instruction
        if name == "format":
            return json.dumps(self.response_format, ensure_ascii=False)
        return self.output_type.to_duckdb()

    def answer(self, text: str, logprobs: list | None) -> Any:
        """The model's answer text as a JSON-ready value of `output_type`; OutputError if it does not fit."""
        parsed = parse_output(text, self.answer_type)
        check_enums(parsed, self.schema)
        confidence = _Confidence(text, logprobs) if self.logprobs else None
        try:
            reshaped = self.reshape(parsed, confidence)
        except (KeyError, TypeError) as exc:  # a shape the schema rules out, from a model that ignored it
            raise OutputError(f"the answer does not have the fields asked for (missing {exc})") from None
        return conform(reshaped, self.output_type)

    def reshape(self, parsed: Any, confidence: _Confidence | None) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Classify(Spec):
    multilabel: bool = False
    extras: tuple[str, ...] = ()   # "confidence", "rationale": a struct per label instead of the label

    def reshape(self, parsed: dict, confidence: _Confidence | None) -> Any:
        if self.multilabel:  # each item a label, or {"rationale", "label"}
            entries = [(item, ("labels", i, "label")) if isinstance(item, dict) else ({"label": item}, ("labels", i))
                       for i, item in enumerate(parsed["labels"])]
        else:
            entries = [(parsed, ("label",))]
        out = []
        for item, path in entries:
            if not self.extras:
                out.append(item["label"])
                continue
            row = {"label": item["label"]}
            if "confidence" in self.extras:
                row["confidence"] = confidence.of(path) if confidence else None
            if "rationale" in self.extras:
                row["rationale"] = item["rationale"]
            out.append(row)
        return out if self.multilabel else out[0]


@dataclass(frozen=True)
class Extract(Spec):
    extras: tuple[str, ...] = ()   # "confidence", "citation": a struct per top-level field

    def reshape(self, parsed: dict, confidence: _Confidence | None) -> Any:
        if not self.extras:
            return parsed
        out = {}
        for name, item in parsed.items():
            value = item["value"] if "citation" in self.extras else item
            row = {"value": value}
            if "confidence" in self.extras:
                path = (name, "value") if "citation" in self.extras else (name,)
                row["confidence"] = confidence.of(path) if confidence else None
            if "citation" in self.extras:
                row["citation"] = item["citation"]
            out[name] = row
        return out


def _classify(labels: Any, options: dict[str, Any], multilabel: Any) -> Classify:
    function = "ai_classify"
    if isinstance(labels, Mapping):   # label -> description (a JSON object or a MAP)
        described = [(_name(k, function, "labels"), v) for k, v in labels.items()]
    elif isinstance(labels, list):
        described = [(_name(k, function, "labels"), None) for k in labels]
    else:
        raise ArgumentError(f"{function}: labels must be a list such as ['a', 'b'], or a JSON object of label to "
                            f"description such as '{{\"a\": \"...\", \"b\": \"...\"}}', got {labels!r}")
    names = [name for name, _ in described]
    if not names:
        raise ArgumentError(f"{function}: labels is empty")
    if len(set(names)) != len(names):
        raise ArgumentError(f"{function}: labels repeat a label: {names!r}")
    for name, description in described:
        if description is not None and not isinstance(description, str):
            raise ArgumentError(f"{function}: the description of label {name!r} must be a string, got {description!r}")
    if multilabel is not None and "multilabel" in options and options["multilabel"] != multilabel:
        raise ArgumentError(f"{function}: multilabel => {str(multilabel).lower()} disagrees with options' multilabel")
    multi = bool(options.get("multilabel", multilabel))
    extras = tuple(e for e in ("confidence", "rationale") if options.get(e))

    if any(d for _, d in described):
        listed = "".join(f"\n- {name}: {d}" if d else f"\n- {name}" for name, d in described)
        task = (f"Which of these labels apply to the text?{listed}\nAnswer with every label that applies."
                if multi else f"Classify the text with one of these labels:{listed}")
    else:
        task = (f"Which of these labels apply to the text: {', '.join(names)}? Answer with every label that applies."
                if multi else f"Classify the text with one of these labels: {', '.join(names)}.")
    if "rationale" in extras:
        task += (" Give a short rationale before each label." if multi
                 else " Give a short rationale first, then the label.")
    instruction = f"{options['instructions']}\n\n{task}" if options.get("instructions") else task

    label_schema = {"type": "string", "enum": names}
    if "rationale" in extras:  # the rationale comes first, so the model reasons before it answers
        item_schema = _object({"rationale": {"type": "string"}, "label": label_schema})
        item_type = _struct([("rationale", _TEXT), ("label", _TEXT)])
    else:
        item_schema, item_type = label_schema, _TEXT
    result_fields = [("label", _TEXT)] + [(e, _CONFIDENCE if e == "confidence" else _TEXT) for e in extras]
    result = _struct(result_fields) if extras else _TEXT
    if multi:
        items = item_schema if "rationale" in extras else label_schema
        schema = _object({"labels": {"type": "array", "items": items, "maxItems": len(names)}})
        answer_type = _struct([("labels", SqlType("list", element=item_type))])
        output = SqlType("list", element=result)
    elif "rationale" in extras:
        schema, answer_type, output = item_schema, item_type, result
    else:
        schema = _object({"label": label_schema})
        answer_type, output = _struct([("label", _TEXT)]), result
    return Classify(instruction, schema, answer_type, output, "confidence" in extras, multi, extras)


def _field(spec: Any, name: str, function: str) -> tuple[dict, SqlType, str | None]:
    """One ai_extract field: (its JSON schema, its SQL type, its description)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ArgumentError(f"{function}: field {name!r} must be a type name such as \"string\" or an object with "
                            f"\"type\", got {spec!r}")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise ArgumentError(f"{function}: the description of field {name!r} must be a string, got {description!r}")
    kind = spec.get("type")
    values = spec.get("enum", spec.get("labels", spec.get("values")))
    if kind == "enum" or (kind in ("string", None) and values is not None):
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ArgumentError(f"{function}: enum field {name!r} needs \"labels\" (or \"enum\"), a list of strings")
        schema, sql = {"type": ["string", "null"], "enum": [*values, None]}, _TEXT
    elif kind == "object" or (kind is None and "properties" in spec):
        schema, sql = _fields(spec.get("properties"), function, f"object field {name!r}")
    elif kind == "array":
        if "items" not in spec:
            raise ArgumentError(f"{function}: array field {name!r} needs \"items\", the type of its elements")
        items, element, _ = _field(spec["items"], f"{name}[]", function)
        schema, sql = {"type": "array", "items": items}, SqlType("list", element=element)
    elif isinstance(kind, str) and kind.lower() in _TYPES:
        sql_name, json_type = _TYPES[kind.lower()]
        schema, sql = {"type": [json_type, "null"]}, SqlType("scalar", sql_name)
    else:
        raise ArgumentError(f"{function}: field {name!r} has type {kind!r}; the types are {_KINDS}")
    if description:
        schema = {**schema, "description": description}
    return schema, sql, description


def _fields(properties: Any, function: str, what: str) -> tuple[dict, SqlType]:
    if not isinstance(properties, Mapping) or not properties:
        raise ArgumentError(f"{function}: {what} needs fields: a JSON object of field name to type")
    folded = [str(name).casefold() for name in properties]
    if len(set(folded)) != len(folded):
        raise ArgumentError(f"{function}: {what} has field names that differ only in case: {list(properties)!r}")
    schemas, types = {}, []
    for name, spec in properties.items():
        schemas[name], sql, _ = _field(spec, _name(name, function, "field names"), function)
        types.append((name, sql))
    return _object(schemas), _struct(types)


def _extract(schema: Any, options: dict[str, Any]) -> Extract:
    function = "ai_extract"
    if isinstance(schema, list):  # the first form: field names, each a string
        names = [_name(n, function, "labels") for n in schema]
        if not names or len(set(names)) != len(names):
            raise ArgumentError(f"{function}: labels must be distinct names, got {names!r}")
        if not options:  # as it always was: empty strings for what the text lacks
            return Extract(f"Extract the {', '.join(names)} from the text. Answer with an empty string for any "
                           "not in the text.", _object({n: {"type": "string"} for n in names}),
                           _struct([(n, _TEXT) for n in names]), _struct([(n, _TEXT) for n in names]), False)
        schema = dict.fromkeys(names, "string")
    if not isinstance(schema, Mapping):
        raise ArgumentError(f"{function}: the schema must be a list of field names, or a JSON object of field name "
                            f"to type (or a JSON schema with \"properties\"), got {schema!r}")
    if schema.get("type") == "object" and isinstance(schema.get("properties"), Mapping):
        schema = schema["properties"]   # a full JSON schema
    fields_schema, fields_type = _fields(schema, function, "the schema")
    extras = tuple(e for e, asked in (("confidence", options.get("confidence")), ("citation", options.get("citations")))
                   if asked)
    described = [(name, s.get("description")) for name, s in fields_schema["properties"].items()]
    listed = "".join(f"\n- {name}: {d}" if d else f"\n- {name}" for name, d in described)
    task = f"Extract these fields from the text:{listed}\nAnswer null for any field the text does not give."
    if "citation" in extras:
        task += " For each field give its value and, in citation, the exact words of the text it comes from."
    instruction = f"{options['instructions']}\n\n{task}" if options.get("instructions") else task
    if "citation" in extras:
        answer_schema = _object({name: _object({"value": s, "citation": {"type": ["string", "null"]}})
                                 for name, s in fields_schema["properties"].items()})
        answer_type = _struct([(name, _struct([("value", t), ("citation", _TEXT)])) for name, t in fields_type.fields])
    else:
        answer_schema, answer_type = fields_schema, fields_type
    if extras:
        sub = {"confidence": _CONFIDENCE, "citation": _TEXT}
        output = _struct([(name, _struct([("value", t)] + [(e, sub[e]) for e in extras]))
                          for name, t in fields_type.fields])
    else:
        output = fields_type
    return Extract(instruction, answer_schema, answer_type, output, "confidence" in extras, extras)


@functools.lru_cache(maxsize=256)
def spec(kind: str, labels: str | None, options: str | None, multilabel: str | None) -> Spec:
    """The Spec of one call, from its arguments as to_json() texts."""
    if kind == "classify":
        flag = _decode(multilabel, "multilabel")
        if flag is not None and not isinstance(flag, bool):
            raise ArgumentError(f"ai_classify: multilabel must be true or false, got {flag!r}")
        return _classify(_decode(labels, "labels"), _options(_decode(options, "options"), _CLASSIFY_OPTIONS,
                                                             "ai_classify"), flag)
    if kind == "extract":
        return _extract(_decode(labels, "the schema"), _options(_decode(options, "options"), _EXTRACT_OPTIONS,
                                                                "ai_extract"))
    raise ArgumentError(f"unknown task {kind!r}")


def task_part(kind: str, labels: str | None, options: str | None, multilabel: str | None, part: str) -> str:
    """The SQL function __aiquery_task: one part (PARTS) of a call's Spec, folded by DuckDB while planning."""
    if labels is None:
        raise ArgumentError(f"ai_{kind}: {'labels' if kind == 'classify' else 'the schema'} must be a constant, "
                            "not NULL")
    if part not in PARTS:
        raise ArgumentError(f"unknown part {part!r}")
    return spec(kind, labels, options, multilabel).part(part)


# --------------------------------------------------------------------------------------------
# Confidence from logprobs

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


def _spans(text: str, pos: int, path: tuple, out: dict[tuple, tuple[int, int]]) -> int:
    """Records the character span of every value of the JSON at text[pos:] by its path (keys and
    indexes; a string's span leaves out its quotes) and returns where the value ends."""
    pos = _WHITESPACE.match(text, pos).end()
    start, char = pos, text[pos]
    if char in "{[":
        close, index = ("}" if char == "{" else "]"), 0
        pos = _WHITESPACE.match(text, pos + 1).end()
        while text[pos] != close:
            if char == "{":
                key, pos = scanstring(text, _WHITESPACE.match(text, pos).end() + 1)
                pos = _WHITESPACE.match(text, pos).end() + 1  # the ':'
                pos = _spans(text, pos, path + (key,), out)
            else:
                pos = _spans(text, pos, path + (index,), out)
                index += 1
            pos = _WHITESPACE.match(text, pos).end()
            if text[pos] == ",":
                pos = _WHITESPACE.match(text, pos + 1).end()
        out[path] = (start, pos + 1)
        return pos + 1
    if char == '"':
        _, end = scanstring(text, pos + 1)
        out[path] = (start + 1, end - 1)
        return end
    match = _SCALAR.match(text, pos)
    if match is None:
        raise ValueError(f"not JSON at {pos}")
    out[path] = (start, match.end())
    return match.end()


class _Confidence:
    """Confidence of the values of one answer, from the logprobs of its tokens."""

    def __init__(self, text: str, logprobs: list | None) -> None:
        self._tokens: list[tuple[int, int, float]] = []  # byte start, byte end, logprob
        self._spans: dict[tuple, tuple[int, int]] = {}
        self._text = text
        if not logprobs:
            return
        data, pieces = text.encode(), []
        for token, logprob, raw in logprobs:
            pieces.append(bytes(raw) if isinstance(raw, list) else token.encode())
            start = self._tokens[-1][1] if self._tokens else 0
            self._tokens.append((start, start + len(pieces[-1]), logprob))
        if b"".join(pieces) != data:
            self._tokens = []  # the tokens do not spell the answer: nothing to attribute
            return
        start = text.find("{")
        try:
            _spans(text, start, (), self._spans)
        except (ValueError, IndexError):
            self._spans = {}

    def of(self, path: tuple) -> float | None:
        span = self._spans.get(path)
        if span is None or not self._tokens:
            return None
        begin, end = len(self._text[:span[0]].encode()), len(self._text[:span[1]].encode())
        logprobs = [lp for s, e, lp in self._tokens if s < end and e > begin]
        return math.exp(sum(logprobs)) if logprobs else None

