"""A Call is one row's request; here it is built from the row's arguments: the endpoint looked up
by name, and the body its task's wire format builds (aiquery/_wire.py)."""

from __future__ import annotations

import difflib
import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from . import _wire
from ._config import PREFIX_CHARS, Endpoint
from ._errors import ArgumentError, UnknownEndpointError
from ._options import Options
from ._providers import Target

if TYPE_CHECKING:
    from ._cache import ResponseCache
    from ._usage import Price


class Call:
    """One row's request. Embedding calls carry their text in `text`; `body` holds the rest.
    `payload` is the body as sent, keys in the order they were built (encoded here, on DuckDB's or
    the prefetcher's thread, not on the engine's busy loop): a json_schema's properties reach the
    model in the order the user declared them, which "reason first" schemas depend on. `key` is
    what identical requests share, here and in the response cache: provider, URL, headers (the key
    among them, see Target.identity), the body with its keys sorted and text, hashed, plus the
    order of any schema's properties that are not in sorted order (that order changes what the
    model does; other key orders do not, and a schema already sorted keeps the key it had when
    bodies were sent sorted). `cache` is where its answer is kept, if anywhere.
    `batch`: sent through the provider's batch API (aiquery/_batch.py) instead of on its own."""

    __slots__ = ("endpoint", "target", "body", "text", "payload", "key", "cache", "price", "batch")

    def __init__(self, endpoint: Endpoint, target: Target, body: dict[str, Any], text: str | None = None,
                 cache: ResponseCache | None = None):
        self.endpoint, self.target, self.body, self.text, self.cache = endpoint, target, body, text, cache
        self.price: Price | None = None
        self.batch = False
        self.payload = orjson.dumps(body)
        digest = hashlib.blake2b(f"{endpoint.provider}\0{target.url}\0".encode(), digest_size=16)
        digest.update(target.identity)
        digest.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        orders = _unsorted_properties(body)
        if orders:
            digest.update(b"\0properties\0" + orjson.dumps(orders))
        if text is not None:
            digest.update(b"\0" + text.encode())
        self.key = digest.digest()


_CONTENT_KEYS = ("messages", "prompt", "input", "dataframe_records", "inputs")  # data, never a schema


def _unsorted_properties(body: dict[str, Any]) -> list[list[str]]:
    """The property names of every JSON schema object in `body` (response_format, tools) whose
    properties are not in sorted order (the walk's order is fixed, so equal bodies give equal lists)."""
    found: list[list[str]] = []
    stack = [value for name, value in body.items() if name not in _CONTENT_KEYS]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                names = list(properties)
                if names != sorted(names):
                    found.append(names)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found

def lookup(endpoints: dict[str, Endpoint], name: Any) -> Endpoint:
    if not isinstance(name, str):
        raise ArgumentError("ai_query: endpoint must be a non-NULL string naming a registered endpoint")
    endpoint = endpoints.get(name)
    if endpoint is None:
        known = sorted(endpoints)
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UnknownEndpointError(f"ai_query: unknown endpoint {name!r}.{hint} Registered endpoints: "
                                   f"{', '.join(known) or '(none)'}; add it under [endpoints.{name}] in "
                                   "aiquery.toml or pass endpoints= to aiquery.connect()")
    return endpoint


def call_for(endpoint: Endpoint, target: Target, request: Any, options: Options, params: dict,
          image: bytes | None) -> Call:
    if endpoint.task != "chat" and (options.response_format is not None or image is not None or options.tools):
        argument = ("responseFormat" if options.response_format is not None else "files" if image is not None
                    else "modelParameters tools")
        raise ArgumentError(f"{argument} applies to chat endpoints only; endpoint {endpoint.name!r} "
                            f"is a {endpoint.task} endpoint")
    if endpoint.task != "embeddings" and options.normalize:
        raise ArgumentError(f"normalize applies to embeddings endpoints only; endpoint {endpoint.name!r} "
                            f"is a {endpoint.task} endpoint")
    if endpoint.task == "chat":
        body = _wire.chat_body(request, params, options.response_format, [image] if image else [])
    elif endpoint.task == "completions":
        body = _wire.completions_body(request, params)
    elif endpoint.task == "custom":
        body = _wire.custom_body(request, params)
    else:
        if not isinstance(request, str):
            raise ArgumentError(f"request for endpoint {endpoint.name!r} (embeddings) must be a string to embed, "
                            f"got {type(request).__name__}")
        return Call(endpoint, target, params, text=request)
    if endpoint.prompt_cache_key and endpoint.task != "custom" and "prompt_cache_key" not in body:
        body["prompt_cache_key"] = _prompt_cache_key(body)
    return Call(endpoint, target, body)


def _prompt_cache_key(body: dict[str, Any]) -> str:
    """OpenAI's prompt_cache_key: the same for requests whose prompts start with the same
    PREFIX_CHARS characters, so the provider routes them to the machine that has that prefix cached."""
    text = _wire.prompt_text(body)[:PREFIX_CHARS]
    return "aiquery-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
