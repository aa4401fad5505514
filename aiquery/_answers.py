"""A model's answer as the column's JSON: converted to returnType / responseFormat, checked against a
schema's enums, tool calls and unit vectors shaped, and failOnError => false rows with their error and
details. The SQL macro turns the JSON into the typed column (aiquery/sql/ai_query.sql)."""

from __future__ import annotations

import json
import math
from typing import Any

from . import _wire
from ._config import Endpoint
from ._errors import AIQueryError, OutputError
from ._options import Options
from ._scrub import printable
from ._sqltypes import SqlType, check_enums, conform, parse_output

def _check_enums(value: Any, response_format: dict[str, Any] | None) -> None:
    """A json_schema responseFormat's values with an `enum` hold only the values listed."""
    if response_format and response_format.get("type") == "json_schema":
        check_enums(value, (response_format.get("json_schema") or {}).get("schema"))


def _converted(value: Any, output_type: SqlType | None, options: Options) -> Any:
    """One answer (a text, a vector, a prediction) as the requested type."""
    if output_type is not None:
        converted = parse_output(value, output_type) if isinstance(value, str) else conform(value, output_type)
        _check_enums(converted, options.response_format)
        return converted
    if options.expects_json:
        try:
            parsed = json.loads(value)
        except ValueError:
            raise OutputError(f"the answer is not the JSON responseFormat asked for: {value[:200]!r}") from None
        _check_enums(parsed, options.response_format)
    return value


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for call in calls:
        try:
            json.loads(call["arguments"])
        except ValueError:
            raise OutputError(f"the model called tool {call['name']!r} with arguments that are not JSON: "
                              f"{call['arguments'][:200]!r}") from None
    return calls


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    if not norm or not math.isfinite(norm):
        raise OutputError(f"normalize => true: a vector of length {norm} cannot be scaled to unit length")
    return [x / norm for x in vector]


def value(endpoint: Endpoint, answer: _wire.Answer, options: Options) -> Any:
    """The answer as a JSON-ready value of the column's type. With n > 1 (a list of answers), an
    ARRAY returnType gets every choice, each converted to its element type; otherwise the first."""
    value, output_type = answer.value, options.output_type
    try:
        if options.task is not None:  # with n > 1 choices, the first, as for other answers
            return options.task.answer(value[0] if isinstance(value, list) else value, answer.logprobs)
        if endpoint.task == "embeddings" and (options.normalize if options.normalize is not None
                                              else endpoint.normalize):
            value = _unit(value)
        if options.tools:
            if not isinstance(value, dict):  # {'tools': NULL} on this row: nothing offered, a text answer
                value = {"content": value[0] if isinstance(value, list) else value, "tool_calls": []}
            content = value["content"]
            return {"content": None if content is None else _converted(content, output_type, options),
                    "tool_calls": _tool_calls(value["tool_calls"])}
        if endpoint.task in ("chat", "completions") and isinstance(value, list):  # n > 1 choices
            if output_type is not None and output_type.kind in ("list", "array"):
                return conform([_converted(v, output_type.element, options) for v in value], output_type)
            value = value[0]
        value = _converted(value, output_type, options)
        if endpoint.task == "custom" and output_type is None and not isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
    except RecursionError:  # json.loads or json.dumps, or a check walking what they made
        raise OutputError(f"endpoint {endpoint.name!r}: the answer is JSON nested too deeply to read") from None
    except OutputError as exc:
        cut = (" The answer was cut off at the token limit (finish_reason 'length'): raise max_tokens."
               if answer.finish_reason == "length" else "")
        raise OutputError(f"endpoint {endpoint.name!r}: {printable(str(exc))}{cut}") from None
    return value


def row(value: Any, outcome: _wire.Answer | AIQueryError, options: Options) -> dict[str, Any]:
    """A failOnError => false row: the answer or the error, and with details => true how it went."""
    failed = isinstance(outcome, AIQueryError)
    row = {"response": value, "errorMessage": str(outcome) if failed else None}
    if options.details:
        usage = {} if failed else outcome.usage
        row["details"] = {
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "total_tokens": usage.get("total_tokens"), "finish_reason": None if failed else outcome.finish_reason,
            "attempts": outcome.attempts, "cached": None if failed else outcome.cached,
            "status": getattr(outcome, "status", None) if failed else None,
            "cached_tokens": usage.get("cached_tokens"),
            "batch_id": getattr(outcome, "batch_id", None)}
    return row
