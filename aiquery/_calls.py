"""One row's arguments into a Call: the endpoint looked up by name, and the body its task's wire
format builds (aiquery/_wire.py)."""

from __future__ import annotations

import difflib
import hashlib
from typing import Any

from . import _wire
from ._config import PREFIX_CHARS, Endpoint
from ._engine import Call
from ._errors import ArgumentError, UnknownEndpointError
from ._options import Options
from ._providers import Target

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
