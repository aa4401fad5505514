"""The Python side of ai_query: one Arrow batch of rows in, one JSON text per row out.

The SQL macro (aiquery/sql/ai_query.sql) packs the constant arguments into one JSON `options`
string and turns this function's JSON answer into the typed column (VARCHAR, FLOAT[], a STRUCT)
with json_transform_strict. Here: read the arguments, build one request per row, let the engine
send them, and check each answer against the requested type.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from . import _wire
from ._config import Endpoint
from ._engine import Call, Engine
from ._errors import AIQueryError, ArgumentError, OutputError, UnknownEndpointError
from ._types import SqlType, conform, parse_output, parse_type

UDF_NAME = "__aiquery_invoke"
_FORMAT_TYPES = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class Options:
    """The constant arguments of one ai_query call, read once per batch."""

    params: dict[str, Any]
    fail_on_error: bool
    response_format: dict[str, Any] | None  # as sent to the model
    output_type: SqlType | None             # what the answer is converted to (returnType or DDL responseFormat)
    expects_json: bool                      # json_object / json_schema: the answer must parse as JSON


def read_options(text: str) -> Options:
    raw = json.loads(text)
    params = _wire.check_model_parameters(raw.get("modelParameters"))
    fail_on_error = raw.get("failOnError")
    if not isinstance(fail_on_error, bool):
        raise ArgumentError(f"failOnError must be true or false, got {fail_on_error!r}")
    response_format, output_type, expects_json = _response_format(raw.get("responseFormat"))
    return_type = raw.get("returnType")
    if return_type is not None:
        if not isinstance(return_type, str):
            raise ArgumentError(f"returnType must be a type string like 'INT' or 'ARRAY<STRING>', got {return_type!r}")
        output_type = parse_type(return_type, argument="returnType")
    return Options(params, fail_on_error, response_format, output_type, expects_json)


def _response_format(value: Any) -> tuple[dict | None, SqlType | None, bool]:
    if value is None:
        return None, None, False
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ArgumentError(f"responseFormat is not valid JSON: {exc}") from None
    if isinstance(value, dict):
        kind = value.get("type")
        if kind not in _FORMAT_TYPES:
            raise ArgumentError(f"responseFormat type must be one of {', '.join(_FORMAT_TYPES)}, got {kind!r}")
        if kind == "json_schema" and not isinstance(value.get("json_schema"), dict):
            raise ArgumentError('responseFormat {"type":"json_schema"} needs a "json_schema" object '
                                'with "name" and "schema"')
        return value, None, kind != "text"
    if not isinstance(value, str):
        raise ArgumentError(f"responseFormat must be a JSON string or a type string, got {value!r}")
    t = parse_type(value, argument="responseFormat")
    if not t.is_struct:
        raise ArgumentError(f"responseFormat {value!r} must be a STRUCT type, e.g. 'STRUCT<label: STRING>'; "
                            "use returnType to convert the answer to another type")
    schema = {"type": "json_schema", "json_schema": {"name": "response", "strict": True, "schema": t.to_json_schema()}}
    return schema, t, True


def _lookup(engine: Engine, name: Any) -> Endpoint:
    if not isinstance(name, str):
        raise ArgumentError("ai_query: endpoint must be a non-NULL string naming a registered endpoint")
    endpoint = engine.endpoints.get(name)
    if endpoint is None:
        known = sorted(engine.endpoints)
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UnknownEndpointError(f"ai_query: unknown endpoint {name!r}.{hint} Registered endpoints: "
                                   f"{', '.join(known) or '(none)'}; add it under [endpoints.{name}] in "
                                   "aiquery.toml or pass endpoints= to aiquery.connect()")
    return endpoint


def _call(endpoint: Endpoint, request: Any, options: Options, image: bytes | None) -> Call:
    where = f"endpoint {endpoint.name!r} ({endpoint.task})"
    if options.response_format is not None and endpoint.task != "chat":
        raise ArgumentError(f"responseFormat applies to chat endpoints only; {where}")
    if image is not None and endpoint.task != "chat":
        raise ArgumentError(f"files applies to chat (vision) endpoints only; {where}")
    params = {**endpoint.model_parameters, **options.params}
    if endpoint.task == "chat":
        body = _wire.chat_body(request, params, options.response_format, [image] if image else [])
    elif endpoint.task == "completions":
        body = _wire.completions_body(request, params)
    elif endpoint.task == "custom":
        body = _wire.custom_body(request, params)
    else:
        if not isinstance(request, str):
            raise ArgumentError(f"request for {where} must be a string to embed, got {type(request).__name__}")
        return Call(endpoint, params, text=request)
    return Call(endpoint, body)


def _value(endpoint: Endpoint, answer: _wire.Answer, options: Options) -> Any:
    """The answer as a JSON-ready value of the column's type."""
    value = answer.value
    if options.output_type is not None:
        if isinstance(value, str):
            return parse_output(value, options.output_type)
        return conform(value, options.output_type)
    if options.expects_json:
        try:
            json.loads(value)
        except ValueError:
            raise OutputError(f"endpoint {endpoint.name!r}: the answer is not the JSON responseFormat asked for: "
                              f"{value[:200]!r}") from None
    if endpoint.task == "custom" and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


def make_udf(engine: Engine):
    """The Arrow UDF bound to `engine`, registered as __aiquery_invoke(endpoint, request, options, files)."""

    def invoke(endpoints: pa.Array, requests: pa.Array, options: pa.Array, files: pa.Array) -> pa.Array:
        n = len(requests)
        names, raw_requests = endpoints.to_pylist(), requests.to_pylist()
        raw_options, images = options.to_pylist(), files.to_pylist()
        parsed: dict[str, Options] = {}
        out: list[str | None] = [None] * n
        calls: list[Call] = []
        rows: list[tuple[int, Endpoint, Options]] = []
        failures: dict[int, tuple[Options, AIQueryError]] = {}
        for i in range(n):
            if raw_requests[i] is None:
                continue  # NULL request: NULL answer, nothing sent
            opts = parsed.get(raw_options[i])
            if opts is None:
                opts = parsed[raw_options[i]] = read_options(raw_options[i])
            endpoint = _lookup(engine, names[i])
            try:
                call = _call(endpoint, json.loads(raw_requests[i]), opts, images[i])
            except ArgumentError as exc:
                if opts.fail_on_error:
                    raise
                failures[i] = (opts, exc)
                continue
            calls.append(call)
            rows.append((i, endpoint, opts))
        fail_fast = all(opts.fail_on_error for _, _, opts in rows)
        answers = engine.run(calls, fail_fast=fail_fast)
        for (i, endpoint, opts), answer in zip(rows, answers):
            if answer is None:
                continue  # not finished: an earlier row failed and stopped the batch
            if not isinstance(answer, AIQueryError):
                try:
                    value = _value(endpoint, answer, opts)
                except AIQueryError as exc:
                    answer = exc
                else:
                    out[i] = json.dumps(value if opts.fail_on_error else {"response": value, "errorMessage": None},
                                        ensure_ascii=False)
                    continue
            if opts.fail_on_error:
                raise answer
            failures[i] = (opts, answer)
        for i, (_opts, exc) in failures.items():
            out[i] = json.dumps({"response": None, "errorMessage": str(exc)}, ensure_ascii=False)
        return pa.array(out, type=pa.string())

    return invoke
