"""ai_join(left_table, left_column, right_table, right_column, condition): a semantic join that does not
ask about every pair.

`JOIN ... ON ai_filter(l.x || r.y, ...)` sends one request per pair: 1,000 x 1,000 rows is a
million requests. Here, over the distinct texts of each side:
- candidates: when the right side has at most k texts, all of them; else each left text's k most
  similar right texts by embedding (cosine similarity; one embeddings request per batch_size texts).
  k => NULL (the default) lists every right text when that takes at most AUTO_WINDOWS requests per
  left text (per_pair: at most AUTO_K pairs), else takes the AUTO_K most similar;
- asking: one chat request per left text that lists its candidates, numbered, and asks which meet
  the condition (split in windows if they do not fit the endpoint's context); or with
  per_pair => true one request per candidate pair, as ai_filter would ask it.
So the default sends one to AUTO_WINDOWS requests per distinct left text, plus any embeddings. A k
of at least the right side's size with per_pair => true is the naive plan. The plan chosen and its requests are in aiquery.estimate()
before running and in aiquery_plans() after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from ._errors import ArgumentError
from ._rank import embed_all, similarities
from ._steps import (NUMBER_OVERHEAD, Step, answer_tokens, answer_value, chat_options, messages,
                     message_tokens, numbered, pack)

PAIR = "Is this true of the left text and the right text in the user message: {condition}?"
LIST = ("The user message holds a left text and numbered candidate texts. Answer with the numbers of every "
        "candidate for which this is true of the left text and that candidate: {condition}? "
        "Answer with an empty list if it is true of none.")
PAIR_FORMAT = "STRUCT<result: BOOLEAN>"
ANSWER_TOKENS = 256
AUTO_K = 10        # k => NULL: candidates per left row when every right row would cost too much
AUTO_WINDOWS = 4   # k => NULL: every right row is listed when that takes at most this many requests per left row


def matches_format(n: int) -> str:
    item = {"type": "integer", "enum": list(range(1, n + 1))}
    schema = {"type": "object", "properties": {"matches": {"type": "array", "items": item, "maxItems": n}},
              "required": ["matches"], "additionalProperties": False}
    return orjson.dumps({"type": "json_schema",
                         "json_schema": {"name": "answer", "strict": True, "schema": schema}}).decode()


def join(step: Step, endpoint_name: Any, groups: Sequence[list[str | None] | None], args: Sequence[dict[str, Any]],
         options: Sequence[str]) -> list[str | None]:
    function = "ai_join"
    arg = args[0]
    condition, k, per_pair = arg.get("condition"), arg.get("k"), arg.get("per_pair")
    if not isinstance(condition, str) or not condition.strip():
        raise ArgumentError(f"{function}: the condition must be a non-empty string, got {condition!r}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ArgumentError(f"{function}: k must be a positive integer (candidates per left row) or NULL (chosen), "
                            f"got {k!r}")
    if not isinstance(per_pair, bool):
        raise ArgumentError(f"{function}: per_pair must be true or false, got {per_pair!r}")
    chat = step.endpoint(endpoint_name, "chat", function)
    left = sorted({v for v in groups[0] or [] if v is not None})
    right = sorted({v for v in arg.get("right") or [] if v is not None})
    if k is None:
        k = len(right) if _fits(step, chat, left, right, per_pair, condition, options[0]) else AUTO_K
    blocking = len(right) > k
    embedder = step.endpoint(arg.get("embedding_endpoint"), "embeddings", function) if blocking else None
    width = min(k, len(right)) if blocking else len(right)
    plan = (f"each left row against its {k} most similar right rows by {embedder.name}" if blocking
            else "each left row against every right row")
    plan += ", one request per pair" if per_pair else ", one request per left row"
    record = step.record(function, chat, plan)
    record.groups += len(left)
    record.rows += len(left) + len(right)
    record.naive_requests += len(left) * len(right)
    if not left or not right:
        return [orjson.dumps([]).decode()]
    if blocking:
        texts = sorted(set(left) | set(right))
        vectors = embed_all(step, embedder, texts)
        record.figures["embedding_requests"] = record.figures.get("embedding_requests", 0) + \
            -(-len(texts) // embedder.batch_size)
        if vectors is None:  # estimating: which candidates is not known before the embeddings
            _plan(step, chat, left, right, width, per_pair, condition, options[0], record)
            return [None]
        at = {t: i for i, t in enumerate(texts)}
        scores = similarities([vectors[at[t]] for t in left], [vectors[at[t]] for t in right])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        candidates = [[right[j] for j in sorted(row)] for row in best]
    else:
        candidates = [right] * len(left)
    pairs = _ask_pairs(step, chat, left, candidates, condition, options[0], record) if per_pair else \
        _ask_lists(step, chat, left, candidates, condition, options[0], record)
    if step.estimating:
        return [None]
    return [orjson.dumps([{"__aiquery_left": a, "__aiquery_right": b} for a, b in pairs]).decode()]


def _fits(step: Step, chat: Any, left: list[str], right: list[str], per_pair: bool, condition: str,
          options: str) -> bool:
    """Whether asking about every right row is cheap enough for k => NULL: at most AUTO_K pairs per left
    row, or (one request per left row) every right row listed in at most AUTO_WINDOWS requests."""
    if per_pair or len(right) <= AUTO_K:
        return len(right) <= AUTO_K
    counter = step.manyrow.counter(chat)
    _, raw = chat_options(options, "ai_join", chat)
    longest = max(counter(t) for t in left)
    room = (chat.context_tokens - (answer_tokens(chat, raw) or ANSWER_TOKENS) - longest - 8
            - message_tokens(counter, LIST.format(condition=condition)))
    needed = sum(counter(t) + NUMBER_OVERHEAD for t in right)
    return room > 0 and needed <= AUTO_WINDOWS * room


def _ask_pairs(step: Step, chat: Any, left: list[str], candidates: list[list[str]], condition: str, options: str,
               record: Any) -> list[tuple[str, str]]:
    options_text, _ = chat_options(options, "ai_join", chat, PAIR_FORMAT)
    work, calls = [], []
    for text, cands in zip(left, candidates):
        for other in cands:
            opts, call = step.call(chat, messages(PAIR.format(condition=condition),
                                                  f"Left text: {text}\n\nRight text: {other}"), options_text)
            work.append((text, other, opts))
            calls.append(call)
    answers = step.send(calls, True, record)
    if step.estimating:
        return []
    return [(a, b) for (a, b, opts), answer in zip(work, answers) if answer_value(chat, answer, opts)["result"]]


def _ask_lists(step: Step, chat: Any, left: list[str], candidates: list[list[str]], condition: str, options: str,
               record: Any) -> list[tuple[str, str]]:
    counter = step.manyrow.counter(chat)
    _, raw = chat_options(options, "ai_join", chat)
    max_tokens = answer_tokens(chat, raw) or ANSWER_TOKENS
    instruction = LIST.format(condition=condition)
    work, calls = [], []
    for text, cands in zip(left, candidates):
        head = f"Left text: {text}\n\nCandidates:\n"
        room = chat.context_tokens - max_tokens - message_tokens(counter, instruction) - counter(head)
        for window in pack(cands, [counter(c) + NUMBER_OVERHEAD for c in cands], room):
            texts = [cands[i] for i in window]
            options_text, _ = chat_options(options, "ai_join", chat, matches_format(len(texts)), ANSWER_TOKENS)
            opts, call = step.call(chat, messages(instruction, head + numbered(texts)), options_text)
            work.append((text, texts, opts))
            calls.append(call)
    answers = step.send(calls, True, record)
    if step.estimating:
        return []
    pairs = []
    for (text, texts, opts), answer in zip(work, answers):
        for i in dict.fromkeys(answer_value(chat, answer, opts)["matches"]):
            pairs.append((text, texts[i - 1]))
    return pairs


def _plan(step: Step, chat: Any, left: list[str], right: list[str], width: int, per_pair: bool, condition: str,
          options: str, record: Any) -> None:
    """While estimating with blocking: the chat requests, with each left row's candidates of average size."""
    counter = step.manyrow.counter(chat)
    _, raw = chat_options(options, "ai_join", chat)
    max_tokens = answer_tokens(chat, raw) or ANSWER_TOKENS
    right_size = sum(counter(t) for t in right) / len(right)
    left_tokens = sum(counter(t) for t in left)
    if per_pair:
        requests = len(left) * width
        tokens = width * left_tokens + requests * (right_size + message_tokens(counter, PAIR.format(condition=condition)))
    else:
        requests = len(left)
        tokens = left_tokens + requests * (width * (right_size + NUMBER_OVERHEAD)
                                           + message_tokens(counter, LIST.format(condition=condition)))
    step.planned(chat, requests, round(tokens), max_tokens)
    record.requests += requests
