"""Request bodies and response parsing: the OpenAI wire format, which Databricks serving shares.

Chat:        {"messages": [...], **params} -> choices[0].message.content (a string, or a list of
             blocks for reasoning models: the "text" blocks are the answer, "reasoning" ones are not).
             With "tools": {"content": text or None, "tool_calls": [{"id", "name", "arguments"}]}.
Completions: {"prompt": "...", **params}  -> choices[0].text
Both:        with "n" > 1, the list of every choice's answer, in choices[].index order.
Embeddings:  {"input": [...], **params}   -> data[i].embedding, matched to inputs by data[i].index
Custom:      {"dataframe_records": [record]} for a struct, {"inputs": [value]} for one value
             -> predictions[0]
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._errors import ArgumentError, ResponseError
from ._scrub import printable, shorten

JSON_DEPTH = 1024  # orjson's limit on nesting; a deeper body is refused as not JSON

# Parameter types the OpenAI API documents; others pass through untouched (provider extras).
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "max_tokens": (int,), "max_completion_tokens": (int,), "n": (int,), "seed": (int,),
    "temperature": (int, float), "top_p": (int, float), "top_k": (int,),
    "presence_penalty": (int, float), "frequency_penalty": (int, float),
    "stop": (str, list), "reasoning_effort": (str,), "thinking": (dict,), "logprobs": (bool,),
}
# Set by aiquery itself from other arguments; a modelParameters entry may not override them.
_RESERVED_PARAMS = {"messages": "the request argument", "prompt": "the request argument",
                    "input": "the request argument", "model": "the endpoint's model setting",
                    "stream": "ai_query, which reads whole answers", "dataframe_records": "the request argument",
                    "inputs": "the request argument",
                    "response_format": "the responseFormat argument"}
_TOOL_CHOICES = ("none", "auto", "required")
TEXT_ONLY = "__aiquery_text_only"  # the task functions' mark (aiquery/sql/functions.sql): no tools

_IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"),
                (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


@dataclass
class Answer:
    """One parsed result: `value` is the text, the vector or the prediction."""

    value: Any  # chat and completions: the text; a list of texts when n > 1 (dicts when tools were sent)
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    attempts: int = 1      # requests it took (0: from the response cache)
    cached: bool = False
    batch_id: str | None = None  # the provider's batch that answered it (batch mode), in this run
    logprobs: list | None = None  # chat answers asked with "logprobs": [token, logprob, bytes or None] each


def check_model_parameters(params: Any) -> dict[str, Any]:
    """modelParameters as a dict, with the types of well-known parameters checked."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ArgumentError(f"modelParameters must be a struct or map like {{'max_tokens': 100}}, got {params!r}")
    out = {}
    text_only = params.get(TEXT_ONLY) is True
    params = {k: v for k, v in params.items() if k != TEXT_ONLY}
    if text_only and params.get("tools") is not None:
        raise ArgumentError("modelParameters: tools work with ai_query only, not with the task functions "
                            "(they answer in text)")
    for name, value in params.items():
        if value is None:
            continue  # struct fields left NULL in SQL mean "not set"
        if name in _RESERVED_PARAMS:
            raise ArgumentError(f"modelParameters: {name!r} is set by ai_query itself and cannot be a parameter "
                                f"(it comes from {_RESERVED_PARAMS[name]})")
        expected = _PARAM_TYPES.get(name)
        if expected and (not isinstance(value, expected) or isinstance(value, bool) and bool not in expected):
            names = " or ".join(t.__name__ for t in expected)
            raise ArgumentError(f"modelParameters: {name!r} must be {names}, got {value!r}")
        if name == "n" and value < 1:
            raise ArgumentError(f"modelParameters: 'n' is the number of choices, 1 or more, got {value}")
        if name == "encoding_format" and value != "float":
            raise ArgumentError(f"modelParameters: encoding_format {value!r} is not read back; ai_query asks for "
                                "and returns float vectors (leave encoding_format out)")
        out[name] = _tools(value) if name == "tools" else _tool_choice(value) if name == "tool_choice" else value
    if "tool_choice" in out and "tools" not in out:
        raise ArgumentError("modelParameters: tool_choice needs tools")
    named = out.get("tool_choice")
    if isinstance(named, dict):
        name = (named.get("function") or {}).get("name")
        if name not in [t["function"]["name"] for t in out["tools"]]:
            raise ArgumentError(f"modelParameters: tool_choice names function {name!r}, which is not in tools")
    return out


def _without_nulls(value: Any) -> Any:
    """SQL lists of structs get NULL for every field one element lacks: those are not JSON-schema values."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _json_argument(name: str, value: Any, opening: str) -> Any:
    if isinstance(value, str) and value.lstrip().startswith(opening):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ArgumentError(f"modelParameters: {name} is not valid JSON: {exc}") from None
    return _without_nulls(value)


def _tools(value: Any) -> list[dict[str, Any]]:
    """tools as a list of {"type": "function", "function": {"name", "description", "parameters"}}, from
    SQL structs or a JSON text."""
    tools = _json_argument("tools", value, "[")
    example = ("[{'type': 'function', 'function': {'name': 'get_weather', 'parameters': {...JSON schema...}}}] "
               "or that list as JSON text")
    if not isinstance(tools, list) or not tools:
        raise ArgumentError(f"modelParameters: tools must be a non-empty list like {example}, got {value!r}")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(function, Mapping) \
                or not isinstance(function.get("name"), str) or not function["name"]:
            raise ArgumentError(f"modelParameters: tools[{i + 1}] must be {{'type': 'function', 'function': "
                                f"{{'name': ..., 'parameters': ...}}}}, got {tool!r}")
        if not isinstance(function.get("parameters", {}), Mapping):
            raise ArgumentError(f"modelParameters: tools[{i + 1}].function.parameters must be a JSON schema object")
    return tools


def _tool_choice(value: Any) -> str | dict[str, Any]:
    choice = _json_argument("tool_choice", value, "{")
    if choice in _TOOL_CHOICES or isinstance(choice, Mapping) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), Mapping) and isinstance(choice["function"].get("name"), str):
        return choice
    raise ArgumentError(f"modelParameters: tool_choice must be one of {', '.join(_TOOL_CHOICES)} or "
                        f"{{'type': 'function', 'function': {{'name': ...}}}}, got {value!r}")


def image_part(data: bytes) -> dict[str, Any]:
    """A vision content part for an image file's bytes (JPEG, PNG, GIF or WebP)."""
    mime = next((m for magic, m in _IMAGE_TYPES if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise ArgumentError(f"files: {len(data)} bytes starting {data[:8]!r} are not a JPEG, PNG, GIF or WebP image")
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _messages(request: Any) -> list[dict[str, Any]]:
    if isinstance(request, str):
        return [{"role": "user", "content": request}]
    if isinstance(request, list) and request and all(isinstance(m, Mapping) for m in request):
        messages = []
        for i, m in enumerate(request):
            if not isinstance(m.get("role"), str) or "content" not in m:
                raise ArgumentError(f"request: message {i + 1} needs 'role' and 'content' fields, got {dict(m)!r}")
            messages.append({k: v for k, v in m.items() if v is not None})
        return messages
    raise ArgumentError("request for a chat endpoint must be a string prompt or a list of "
                        f"{{'role': ..., 'content': ...}} messages, got {type(request).__name__}")


def chat_body(request: Any, params: dict[str, Any], response_format: dict | None,
              images: Sequence[bytes] = ()) -> dict[str, Any]:
    messages = _messages(request)
    if images:
        last = next((m for m in reversed(messages) if m["role"] == "user"), None)
        if last is None or not isinstance(last["content"], str):
            raise ArgumentError("files: images attach to the last user message, which must be text")
        last["content"] = [{"type": "text", "text": last["content"]}, *(image_part(b) for b in images)]
    body = {"messages": messages, **params}
    if body.get("tools") and (body.get("n") or 1) > 1:
        raise ArgumentError("modelParameters: tools with n > 1 is not supported: ask for one choice")
    if response_format is not None:
        body["response_format"] = response_format
    return body


def completions_body(request: Any, params: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(request, str):
        raise ArgumentError(f"request for a completions endpoint must be a string prompt, got {type(request).__name__}")
    return {"prompt": request, **params}


def embeddings_body(inputs: list[str], params: dict[str, Any]) -> dict[str, Any]:
    return {"input": inputs, **params}


def custom_body(request: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A struct of named inputs is one `dataframe_records` row. Any other value (a single column:
    text, a number, a list) goes as MLflow's tensor input of one row, `{"inputs": [value]}`, which
    MLflow serving maps onto a model's one input column."""
    if isinstance(request, Mapping):
        return {"dataframe_records": [dict(request)], **params}
    return {"inputs": [request], **params}


def prompt_text(body: Mapping[str, Any]) -> str:
    """The text a provider's prefix cache matches from its start: a chat body's message texts in
    order (other content parts as JSON), a completions body's prompt; '' for other bodies."""
    if "messages" in body:
        return "\0".join(m["content"] if isinstance(m.get("content"), str) else
                          orjson.dumps(m.get("content")).decode() for m in body["messages"])
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _load(payload: bytes, endpoint: str) -> Any:
    if not payload.strip():
        raise ResponseError(f"endpoint {endpoint!r} answered 200 with an empty body", endpoint=endpoint,
                            status=200, retryable=True)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        what, retryable = _why_not_json(payload, str(exc))
        raise ResponseError(f"endpoint {endpoint!r} answered 200 with a body that is {what}: {_excerpt(payload)}",
                            endpoint=endpoint, status=200, retryable=retryable) from None


_STREAM_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")


def _why_not_json(payload: bytes, problem: str) -> tuple[str, bool]:
    """Why a body does not parse, and whether asking again may help: a body cut short on its way
    may come whole next time; one that is not UTF-8, nested too deep, holds NaN, or is a stream
    will be the same again (and each try may be billed)."""
    if "depth limit" in problem:
        return f"JSON nested more than {JSON_DEPTH} levels deep", False
    if payload.lstrip().startswith(_STREAM_STARTS):
        return ("a server-sent event stream, not one JSON answer (aiquery does not ask for streaming: check that "
                "the server or a proxy does not turn stream on)"), False
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.end < len(payload) or exc.reason != "unexpected end of data":  # not just a character cut in two
            return "not valid UTF-8", False
    try:
        json.loads(payload)  # accepts NaN, Infinity and numbers too large for a double, as JSON does not
        return "not JSON (it holds NaN, Infinity or a number too large for a double)", False
    except (ValueError, RecursionError):
        return "not JSON", True


def _dumps(value: Any) -> str:
    """`value` (parsed by orjson, so at most JSON_DEPTH deep) as JSON text, for messages and tool arguments."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:  # json.dumps recurses in C and stops short of orjson's depth
        raise ResponseError("the answer holds JSON nested too deeply to read", endpoint="", status=200) from None


def _missing(endpoint: str, what: str, data: Any) -> ResponseError:
    try:
        shown = _excerpt(_dumps(data).encode())
    except ResponseError:
        shown = f"(JSON nested nearly {JSON_DEPTH} levels deep)"
    return ResponseError(f"endpoint {endpoint!r} answered 200 without {what}: {shown}", endpoint=endpoint, status=200)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage(data: Mapping) -> dict[str, int]:
    """The answer's token counts: prompt_tokens (cached ones included), completion_tokens,
    total_tokens and cached_tokens, whichever way the provider spells them:
    - OpenAI, llama.cpp, vLLM, Gemini: usage.prompt_tokens_details.cached_tokens (Responses API:
      usage.input_tokens_details.cached_tokens);
    - Anthropic: usage.cache_read_input_tokens, with input_tokens counting only the uncached
      rest (cache_creation_input_tokens are written to the cache: prompt tokens, not cached ones);
    - DeepSeek: usage.prompt_cache_hit_tokens;
    - llama.cpp without the usage field: timings.cache_n (with timings.prompt_n the uncached rest).
    Other integer fields of `usage` are kept as they are."""
    usage = data.get("usage")
    timings = data.get("timings")
    if not isinstance(usage, Mapping):
        usage = {}
    out = {k: v for k, v in usage.items() if _int(v) is not None}
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    if cached is None:
        cached = _int(usage.get("cache_read_input_tokens"))
    if cached is None:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    if cached is None and isinstance(timings, Mapping):
        cached = _int(timings.get("cache_n"))
    if "prompt_tokens" not in out:
        if "input_tokens" in out:  # Anthropic counts cached and cache-written tokens apart from input_tokens
            anthropic = "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage
            extra = (out.get("cache_read_input_tokens", 0) + out.get("cache_creation_input_tokens", 0)
                     if anthropic else 0)
            out["prompt_tokens"] = out["input_tokens"] + extra
        elif isinstance(timings, Mapping) and _int(timings.get("prompt_n")) is not None:
            out["prompt_tokens"] = timings["prompt_n"] + (cached or 0)
    if "completion_tokens" not in out:
        if "output_tokens" in out:
            out["completion_tokens"] = out["output_tokens"]
        elif isinstance(timings, Mapping) and _int(timings.get("predicted_n")) is not None:
            out["completion_tokens"] = timings["predicted_n"]
    if "total_tokens" not in out and ("prompt_tokens" in out or "completion_tokens" in out):
        out["total_tokens"] = out.get("prompt_tokens", 0) + out.get("completion_tokens", 0)
    if cached is not None:
        out["cached_tokens"] = min(cached, out.get("prompt_tokens", cached))
    return out


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # reasoning models: keep the answer's text blocks, not the summary
        texts = [b.get("text") for b in content if isinstance(b, Mapping) and b.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def _choices(data: Any, endpoint: str, request: Mapping) -> list[Mapping]:
    """The choices to read: the first, or all `n` of them in index order."""
    choices = data.get("choices") if isinstance(data, Mapping) else None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, Mapping) for c in choices):
        raise _missing(endpoint, "choices", data)
    wanted = request.get("n") or 1
    if wanted == 1:
        return choices[:1]
    if len(choices) != wanted:
        raise ResponseError(f"endpoint {endpoint!r} answered {len(choices)} choice(s) where n = {wanted} asked for "
                            f"{wanted}: the server may not support n", endpoint=endpoint, status=200)
    return sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)


def _answer(values: list[Any], data: Mapping, choices: list[Mapping], request: Mapping) -> Answer:
    value = values if (request.get("n") or 1) > 1 else values[0]
    return Answer(value, _usage(data), choices[0].get("finish_reason"))


def _tool_calls(message: Mapping, endpoint: str, data: Any) -> list[dict[str, str]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str):
            raise _missing(endpoint, "a function name in choices[].message.tool_calls[]", data)
        arguments = function.get("arguments")
        if not isinstance(arguments, str):  # some servers send the object itself
            try:
                arguments = _dumps(arguments if arguments is not None else {})
            except ResponseError:
                raise ResponseError(f"endpoint {endpoint!r} answered tool arguments nested too deeply to read",
                                    endpoint=endpoint, status=200) from None
        calls.append({"id": call.get("id") if isinstance(call.get("id"), str) else None, "name": name,
                      "arguments": arguments})
    return calls


def _chat_choice(choice: Mapping, endpoint: str, data: Any, tools: bool) -> Any:
    message = choice.get("message")
    text = _content_text(message.get("content")) if isinstance(message, Mapping) else None
    calls = _tool_calls(message, endpoint, data) if tools and isinstance(message, Mapping) else []
    if text is None and not calls:
        if isinstance(message, Mapping) and message.get("content") is None and message.get("refusal"):
            raise ResponseError(f"endpoint {endpoint!r}: the model refused: {shorten(str(message['refusal']))}",
                                endpoint=endpoint, status=200)
        raise _missing(endpoint, "choices[0].message.content text" + (" or tool_calls" if tools else ""), data)
    return {"content": text, "tool_calls": calls} if tools else text


def _logprobs(choice: Mapping) -> list | None:
    """choices[0].logprobs.content as [token, logprob, bytes] triples; None when absent or not of
    that shape (confidence is then NULL: logprobs are an extra, not the answer)."""
    content = choice.get("logprobs")
    content = content.get("content") if isinstance(content, Mapping) else None
    if not isinstance(content, list):
        return None
    out = []
    for item in content:
        token, logprob = (item.get("token"), item.get("logprob")) if isinstance(item, Mapping) else (None, None)
        raw = item.get("bytes") if isinstance(item, Mapping) else None
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
            return None
        out.append([token, float(logprob), raw if isinstance(raw, list) else None])
    return out


def parse_chat(payload: bytes, endpoint: str, request: Mapping) -> Answer:
    data = _load(payload, endpoint)
    choices = _choices(data, endpoint, request)
    tools = bool(request.get("tools"))
    answer = _answer([_chat_choice(c, endpoint, data, tools) for c in choices], data, choices, request)
    if len(choices) == 1:
        answer.logprobs = _logprobs(choices[0])
    return answer


def parse_completions(payload: bytes, endpoint: str, request: Mapping) -> Answer:
    data = _load(payload, endpoint)
    choices = _choices(data, endpoint, request)
    if not all(isinstance(c.get("text"), str) for c in choices):
        raise _missing(endpoint, "choices[].text", data)
    return _answer([c["text"] for c in choices], data, choices, request)


def parse_embeddings(payload: bytes, endpoint: str, count: int) -> tuple[list[list[float]], dict[str, int]]:
    data = _load(payload, endpoint)
    items = data.get("data") if isinstance(data, Mapping) else None
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else "no"
        raise ResponseError(f"endpoint {endpoint!r} answered {got} embeddings for {count} inputs",
                            endpoint=endpoint, status=200)
    vectors: list[list[float] | None] = [None] * count
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, Mapping) else None
        vector = item.get("embedding") if isinstance(item, Mapping) else None
        if not isinstance(index, int) or not 0 <= index < count or vectors[index] is not None:
            raise _missing(endpoint, "a distinct data[].index per input", data)
        if not isinstance(vector, list) or not vector or not all(isinstance(x, (int, float)) for x in vector):
            per_token = isinstance(vector, list) and vector and all(isinstance(x, list) for x in vector)
            why = ("one vector per token instead of one per input: the server does not pool. Serve a "
                   "sentence-embedding model with pooling on (llama.cpp's llama-server: --pooling mean; "
                   "llama_cpp.server has no such option)") if per_token else "a list of numbers in data[].embedding"
            raise ResponseError(f"endpoint {endpoint!r} answered {why}", endpoint=endpoint, status=200)
        vectors[index] = [float(x) for x in vector]
    return vectors, _usage(data)  # type: ignore[return-value]


def parse_custom(payload: bytes, endpoint: str, request: Mapping) -> Answer:
    data = _load(payload, endpoint)
    predictions = data.get("predictions") if isinstance(data, Mapping) else None
    if isinstance(predictions, Mapping):  # some models answer a dict of columns
        predictions = [predictions]
    if not isinstance(predictions, list) or len(predictions) != 1:
        raise _missing(endpoint, "one prediction in 'predictions'", data)
    return Answer(predictions[0], _usage(data))


def error_text(payload: bytes) -> str:
    """The provider's own error message from an error body (JSON or HTML), short and printable."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:  # not JSON, cut short, or nested too deep (orjson stops at JSON_DEPTH)
        data = None
    if isinstance(data, Mapping):
        err = data.get("error")
        message = err.get("message") if isinstance(err, Mapping) else err
        message = message or data.get("message") or data.get("detail")
        if isinstance(message, str) and message:
            code = data.get("error_code")
            return shorten(f"{code}: {message}" if isinstance(code, str) else message)
    return _excerpt(payload)


def _excerpt(payload: bytes, limit: int = 200) -> str:
    """The start of a body as one line of printable text, and its size when that is not all of it."""
    text = payload[:limit * 50].decode("utf-8", "replace")
    if "<" in text and ">" in text:  # HTML error pages: keep the words
        text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(printable(text).split())
    if not text:
        return "(empty body)"
    if len(text) > limit or len(payload) > limit * 50:
        return f"{text[:limit]}... ({len(payload):,} bytes)"
    return text
