"""ai_agg(expr, instruction) and ai_summarize_agg(expr): one answer about a whole group of rows.

A group may be larger than the model's context, so it is answered by map and reduce:
- the group's values (NULLs skipped, sorted, so a re-run builds the same prompts and is answered
  from the response cache) are packed into parts that fit the endpoint's `context_tokens`, less
  the instruction and the answer's max_tokens; a value too long for one part is cut into pieces;
- a group that fits in one part takes one request;
- otherwise each part is answered on its own, then the partial answers are packed and combined,
  level by level, until one answer remains.
Every part of every group in DuckDB's batch goes to the engine in one step per level, so they are
sent concurrently. Tokens are counted with the model's tokenizer for the built-in models, else
approximated as 4 characters per token (aiquery/_estimate.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import AIQueryError, ArgumentError
from ._steps import (NUMBER_OVERHEAD, Step, answer_tokens, answer_value, as_json, chat_options, messages,
                       message_tokens, numbered, pack, split_text)

ANSWER_TOKENS = 512  # max_tokens of every step when neither the call nor the endpoint sets one
SUMMARIZE = "Summarize the rows in one paragraph."

WHOLE = ("Answer the instruction below about the rows of a table, given in the user message, each opened by "
         "its number in brackets.\n\nInstruction: {instruction}")
PART = ("Answer the instruction below about the rows of a table given in the user message, each opened by its "
        "number in brackets. These are some of the rows: the answers for the other rows are combined with yours "
        "later, so answer for these rows only.\n\nInstruction: {instruction}")
COMBINE = ("Each numbered answer in the user message answers the instruction below for a different part of a "
           "table's rows. Combine them into one answer to the instruction for all of those rows.\n\n"
           "Instruction: {instruction}")


@dataclass
class _Group:
    row: int
    instruction: str
    texts: list[str]             # the values, then the answers of the last level
    combining: bool = False
    result: str | None = None
    error: AIQueryError | None = None
    done: bool = False
    levels: int = 0


def aggregate(step: Step, endpoint_name: Any, groups: Sequence[list[str | None] | None],
              args: Sequence[dict[str, Any]], options: Sequence[str]) -> list[str | None]:
    """One JSON answer per group (NULL for a group with no values)."""
    out: list[str | None] = [None] * len(groups)
    if not groups:
        return out
    function = "ai_agg"
    endpoint = step.endpoint(endpoint_name, "chat", function)
    counter = step.manyrow.counter(endpoint)
    options_text, raw = chat_options(options[0], function, endpoint, max_tokens=ANSWER_TOKENS)
    fail_on_error = raw.get("failOnError", True)
    max_tokens = answer_tokens(endpoint, raw) or ANSWER_TOKENS
    state: list[_Group] = []
    for row, (values, arg) in enumerate(zip(groups, args)):
        instruction = arg.get("instruction")
        function = arg.get("function", function)
        if not isinstance(instruction, str) or not instruction.strip():
            raise ArgumentError(f"{function}: the instruction must be a non-empty string, got {instruction!r}")
        texts = sorted(v for v in values or [] if v is not None)
        if texts:
            state.append(_Group(row, instruction, texts))
    if options and any(o != options[0] for o in options):
        raise ArgumentError(f"{function}: endpoint, modelParameters and failOnError must be constants")

    def budget(instruction: str) -> int:
        room = (endpoint.context_tokens - max_tokens
                - message_tokens(counter, max((WHOLE, PART, COMBINE), key=len).format(instruction=instruction)))
        if room < 2 * (max_tokens + NUMBER_OVERHEAD):
            raise ArgumentError(
                f"{function}: endpoint {endpoint.name!r} has context_tokens {endpoint.context_tokens}, which leaves "
                f"{max(room, 0)} tokens for rows after the instruction and the answer's max_tokens {max_tokens}; "
                "two answers must fit to combine them: raise context_tokens in the endpoint's settings or lower "
                "max_tokens")
        return room

    record = step.record(function, endpoint, f"map/reduce within {endpoint.context_tokens} context tokens")
    record.groups += len(state)
    record.rows += sum(len(g.texts) for g in state)
    record.naive_requests += len(state)
    planned_requests = planned_tokens = 0
    for g in state:  # the values, pieces of the longest cut to fit
        room = budget(g.instruction)
        texts = []
        for text in g.texts:
            texts.extend(split_text(text, counter(text) + NUMBER_OVERHEAD, room))
        g.texts = texts
    while True:
        calls, opts_list, work = [], [], []
        for g in state:
            if g.done:
                continue
            room = budget(g.instruction)
            sizes = [counter(t) + NUMBER_OVERHEAD for t in g.texts]
            parts = pack(g.texts, sizes, room, at_least=2 if g.combining else 1)
            prompt = COMBINE if g.combining else (WHOLE if len(parts) == 1 else PART)
            for part in parts:
                request = messages(prompt.format(instruction=g.instruction), numbered([g.texts[i] for i in part]))
                opts, call = step.call(endpoint, request, options_text)
                calls.append(call)
                opts_list.append(opts)
                work.append((g, len(parts) == 1))
            g.levels += 1
            if step.estimating:
                # What follows depends on the answers: counted as if each took all of max_tokens.
                n = len(parts)
                while n > 1:
                    combined = pack(["x"] * n, [max_tokens + NUMBER_OVERHEAD] * n, room, at_least=2)
                    planned_requests += len(combined)
                    planned_tokens += sum(len(c) * (max_tokens + NUMBER_OVERHEAD) for c in combined) + len(combined) \
                        * message_tokens(counter, COMBINE.format(instruction=g.instruction))
                    n = len(combined)
                g.done = True
        if not calls:
            break
        answers = step.send(calls, fail_on_error, record)
        if step.estimating:
            continue
        next_texts: dict[int, list[str]] = {}
        for (g, last), opts, answer in zip(work, opts_list, answers):
            if g.error is not None:
                continue
            try:
                value = answer_value(endpoint, answer, opts)
            except AIQueryError as exc:
                if fail_on_error:
                    raise
                g.error, g.done = exc, True
                continue
            if last:
                g.result, g.done = value, True
            else:
                next_texts.setdefault(id(g), []).append(value)
        for g in state:
            if not g.done and id(g) in next_texts:
                g.texts, g.combining = next_texts[id(g)], True
    if step.estimating:
        step.planned(endpoint, planned_requests, planned_tokens, max_tokens)
        record.requests += planned_requests
        return out
    for g in state:
        out[g.row] = as_json(g.result, fail_on_error, g.error)
    record.figures["max_levels"] = max([record.figures.get("max_levels", 0), *(g.levels for g in state)])
    return out
