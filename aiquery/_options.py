"""The constant arguments of one ai_query call (modelParameters, failOnError, responseFormat,
returnType, cache, details, normalize, batch, and a task function's __task), read from the JSON text
the macros pack them into (aiquery/sql/options.sql) and checked once per distinct text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import _wire
from ._errors import ArgumentError
from ._tasks import Spec, spec
from ._sqltypes import SqlType, parse_type

_FORMAT_TYPES = ("text", "json_object", "json_schema")


@dataclass(frozen=True)
class Options:
    """The constant arguments of one ai_query call, read once per batch."""

    params: dict[str, Any]
    fail_on_error: bool
    response_format: dict[str, Any] | None  # as sent to the model
    output_type: SqlType | None             # what the answer is converted to (returnType or DDL responseFormat)
    expects_json: bool                      # json_object / json_schema: the answer must parse as JSON
    cache: bool | None                      # cache => true/false; None: the endpoint's setting
    details: bool                           # details => true: each row also carries usage and attempts
    normalize: bool | None = None           # normalize => true/false (embeddings); None: the endpoint's setting
    tools: bool = False                     # modelParameters is a STRUCT with `tools`: answers are
                                            # STRUCT(content, tool_calls) (aiquery/sql/options.sql)
    batch: bool | None = None               # batch => true/false; None: the endpoint's setting
    task: Spec | None = None                # ai_classify / ai_extract: the answer is reshaped (aiquery/_tasks.py)


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
    cache = raw.get("cache")
    if cache is not None and not isinstance(cache, bool):
        raise ArgumentError(f"cache must be true or false, got {cache!r}")
    details = raw.get("details")
    if not isinstance(details, bool):
        raise ArgumentError(f"details must be true or false, got {details!r}")
    if details and fail_on_error:
        raise ArgumentError("details => true needs failOnError => false (the details go beside each row's answer)")
    normalize = raw.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise ArgumentError(f"normalize must be true or false, got {normalize!r}")
    tools = raw.get("tools") is True
    if "tools" in params and not tools:
        raise ArgumentError("modelParameters: tools need modelParameters to be a struct like {'tools': [...]}, "
                            "not a map: DuckDB types the answer as STRUCT(content, tool_calls) from the struct's fields")
    batch = raw.get("batch")
    if batch is not None and not isinstance(batch, bool):
        raise ArgumentError(f"batch must be true or false, got {batch!r}")
    task = raw.get("task")
    if task is not None:  # the arguments the task function's macro passed, as to_json() texts
        task = spec(task["kind"], task["labels"], task["options"], task["multilabel"])
        if task.logprobs:
            params = {**params, "logprobs": True}
    return Options(params, fail_on_error, response_format, output_type, expects_json, cache, details, normalize,
                   tools, batch, task)


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
