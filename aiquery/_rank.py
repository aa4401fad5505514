"""ai_top_k(expr, query, k): the k values of a group that best match a query, best first.

Asking the chat endpoint about every value (one request per row) is what this avoids:
- every distinct value and the query are embedded (batched: a few requests per thousand values),
  and the values ranked by cosine similarity to the query;
- with rerank => true (the default), the `candidates` most similar (default max(2k, 10)) are
  reranked by the chat endpoint: listed, numbered, in one request when they fit the endpoint's
  context, else in windows whose best k meet again in a final round (a tournament);
- the chat endpoint's ranking comes first; if it names fewer than k (or repeats one), the rest
  follow in similarity order, so the result always has min(k, distinct values) values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from ._errors import AIQueryError, ArgumentError
from ._steps import (NUMBER_OVERHEAD, Step, answer_tokens, answer_value, as_json, chat_options, messages,
                     message_tokens, numbered, pack)

RERANK = ("Rank the numbered texts in the user message by how well each matches the query below, and answer "
          "with the numbers of the {k} that match it best, best first.\n\nQuery: {query}")
ANSWER_TOKENS = 256
EMBEDDING_OPTIONS = '{"modelParameters": null, "failOnError": true, "responseFormat": null, "returnType": null, ' \
                    '"cache": null, "details": false}'


def ranking_format(n: int, k: int) -> str:
    """A json_schema responseFormat for at most k numbers from 1 to n."""
    item = {"type": "integer", "enum": list(range(1, n + 1))}
    schema = {"type": "object", "properties": {"ranking": {"type": "array", "items": item, "maxItems": k}},
              "required": ["ranking"], "additionalProperties": False}
    return orjson.dumps({"type": "json_schema",
                         "json_schema": {"name": "answer", "strict": True, "schema": schema}}).decode()


def embed_all(step: Step, endpoint: Any, texts: Sequence[str]) -> list[list[float]] | None:
    """Embeddings of `texts` in one step (None while estimating)."""
    calls = [step.call(endpoint, text, EMBEDDING_OPTIONS)[1] for text in texts]
    answers = step.run(calls, fail_fast=True)
    if step.estimating:
        return None
    return [answer.value for answer in answers]


def similarities(queries: Sequence[Sequence[float]], values: Sequence[Sequence[float]]) -> np.ndarray:
    """Cosine similarity of each query with each value (vectors need not be normalised)."""
    a = np.asarray(queries, dtype=np.float64)
    b = np.asarray(values, dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def _positive(value: Any, name: str, function: str, allow_null: bool = False) -> int | None:
    if value is None and allow_null:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArgumentError(f"{function}: {name} must be a positive integer, got {value!r}")
    return value


def top_k(step: Step, endpoint_name: Any, groups: Sequence[list[str | None] | None], args: Sequence[dict[str, Any]],
          options: Sequence[str]) -> list[str | None]:
    function = "ai_top_k"
    out: list[str | None] = [None] * len(groups)
    if not groups:
        return out
    arg = args[0]
    if any(a != arg for a in args) or any(o != options[0] for o in options):
        raise ArgumentError(f"{function}: query, k and the other arguments must be constants")
    query, rerank = arg.get("query"), arg.get("rerank")
    if not isinstance(query, str) or not query.strip():
        raise ArgumentError(f"{function}: the query must be a non-empty string, got {query!r}")
    if not isinstance(rerank, bool):
        raise ArgumentError(f"{function}: rerank must be true or false, got {rerank!r}")
    k = _positive(arg.get("k"), "k", function)
    wanted = _positive(arg.get("candidates"), "candidates", function, allow_null=True) or max(2 * k, 10)
    if wanted < k:
        raise ArgumentError(f"{function}: candidates ({wanted}) must be at least k ({k})")
    embedder = step.endpoint(arg.get("embedding_endpoint"), "embeddings", function)
    chat = step.endpoint(endpoint_name, "chat", function) if rerank else None
    values = [sorted(set(v for v in g or [] if v is not None)) for g in groups]
    distinct = sorted({v for vs in values for v in vs})
    plan = (f"embedding similarity ({embedder.name}), then the best {wanted} reranked by {chat.name}" if rerank
            else f"embedding similarity ({embedder.name})")
    record = step.record(function, chat or embedder, plan)
    record.groups += sum(1 for vs in values if vs)
    record.rows += sum(len(vs) for vs in values)
    record.naive_requests += sum(len(vs) for vs in values)
    if not distinct:
        return out
    vectors = embed_all(step, embedder, [query, *distinct])
    embed_requests = -(-(len(distinct) + 1) // embedder.batch_size)
    record.figures["embedding_requests"] = record.figures.get("embedding_requests", 0) + embed_requests
    if not rerank:
        record.requests += embed_requests
    if vectors is None:  # estimating: the rerank rounds are planned
        if rerank:
            _plan_rerank(step, chat, values, wanted, k, query, options[0])
        return out
    scores = dict(zip(distinct, similarities(vectors[:1], vectors[1:])[0]))
    ranked = [sorted(vs, key=lambda v: (-scores[v], v)) for vs in values]
    errors: dict[int, AIQueryError] = {}
    if rerank:
        ranked, errors = _rerank(step, chat, ranked, wanted, k, query, options[0], record)
    for row, vs in enumerate(ranked):
        if values[row]:
            out[row] = as_json(vs[:k] if row not in errors else None, chat_fail_on_error(options[0]), errors.get(row))
    return out


def chat_fail_on_error(options: str) -> bool:
    return orjson.loads(options).get("failOnError", True)


def _rerank(step: Step, chat: Any, ranked: list[list[str]], wanted: int, k: int, query: str, options: str,
            record: Any) -> tuple[list[list[str]], dict[int, AIQueryError]]:
    """Each group's best `wanted` values reranked by the chat endpoint, round by round."""
    counter = step.manyrow.counter(chat)
    fail_on_error = chat_fail_on_error(options)
    _, raw = chat_options(options, "ai_top_k", chat)
    max_tokens = answer_tokens(chat, raw) or ANSWER_TOKENS
    room = chat.context_tokens - max_tokens - message_tokens(counter, RERANK.format(k=k, query=query))
    pools = {row: vs[:wanted] for row, vs in enumerate(ranked) if len(vs) > 1}
    errors: dict[int, AIQueryError] = {}
    final: dict[int, list[str]] = {}
    while pools:
        calls, work = [], []
        for row, pool in pools.items():
            windows = pack(pool, [counter(v) + NUMBER_OVERHEAD for v in pool], room, at_least=k + 1)
            for window in windows:
                texts = [pool[i] for i in window]
                text_format = ranking_format(len(texts), min(k, len(texts)))
                options_text, _ = chat_options(options, "ai_top_k", chat, text_format, ANSWER_TOKENS)
                opts, call = step.call(chat, messages(RERANK.format(k=min(k, len(texts)), query=query),
                                                      numbered(texts)), options_text)
                calls.append(call)
                work.append((row, texts, opts, len(windows) == 1))
        answers = step.send(calls, fail_on_error, record)
        winners: dict[int, list[str]] = {}
        for (row, texts, opts, last), answer in zip(work, answers):
            if row in errors:
                continue
            try:
                picked = answer_value(chat, answer, opts)["ranking"]
            except AIQueryError as exc:
                if fail_on_error:
                    raise
                errors[row] = exc
                continue
            order = list(dict.fromkeys(texts[i - 1] for i in picked))[:k]
            order += [t for t in texts if t not in order]  # what the model left out, in similarity order
            if last:
                final[row] = order
            else:
                winners.setdefault(row, []).extend(order[:k])
        pools = {row: pool for row, pool in winners.items() if row not in errors and row not in final}
    return [final.get(row, vs) for row, vs in enumerate(ranked)], errors


def _plan_rerank(step: Step, chat: Any, values: list[list[str]], wanted: int, k: int, query: str,
                 options: str) -> None:
    """While estimating: the rerank rounds, from the average size of a group's values."""
    counter = step.manyrow.counter(chat)
    _, raw = chat_options(options, "ai_top_k", chat)
    max_tokens = answer_tokens(chat, raw) or ANSWER_TOKENS
    overhead = message_tokens(counter, RERANK.format(k=k, query=query))
    room = chat.context_tokens - max_tokens - overhead
    requests = tokens = 0
    for vs in values:
        if len(vs) < 2:
            continue
        size = max(1, sum(counter(v) for v in vs) // len(vs)) + NUMBER_OVERHEAD
        n = min(wanted, len(vs))
        while True:
            windows = pack(["x"] * n, [size] * n, room, at_least=k + 1)
            requests += len(windows)
            tokens += n * size + len(windows) * overhead
            if len(windows) == 1:
                break
            n = len(windows) * k
    step.planned(chat, requests, tokens, max_tokens)
