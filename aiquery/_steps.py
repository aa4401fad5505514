"""What the many-row functions (ai_agg, ai_summarize_agg, ai_top_k, ai_join, the cascades) share.

Each is a SQL macro (aiquery/sql/manyrow.sql) that hands a Python UDF (aiquery/_manyrow.py) whole
lists of values (a group's, or a table column's) or a batch of rows, and plans the requests. A
*step* is a list of calls sent together through the engine, so every request takes the normal
Call path (response cache, limits, retries, usage per endpoint and per query), and every group
of a DuckDB batch is sent at once. While aiquery.estimate() runs, a step is counted instead of
sent, and steps whose prompts depend on earlier answers are counted as planned requests.

What each function decided (its plan, the requests it built against what the naive plan would
send, a cascade's measured agreement) is kept per query in `Plans`: SQL reads it with
aiquery_plans().
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from . import _wire
from ._config import Endpoint
from ._calls import Call
from ._query import Query
from ._errors import AIQueryError, ArgumentError
from ._estimate import MESSAGE_OVERHEAD, prompt_token_counter
from ._answers import value as answer_value_of
from ._calls import lookup
from ._options import Options

PLAN_HISTORY = 200  # plan records kept (the most recent)

if TYPE_CHECKING:  # it imports this module to install it
    from ._registration import Registration


@dataclass
class PlanRecord:
    """What one many-row function did in one query (summed over DuckDB's batches)."""

    query_id: int | None  # aiquery_query_usage()'s query_id (None while estimating: not kept)
    statement: str
    function: str
    endpoint: str
    plan: str
    rows: int = 0            # values read (NULLs not counted)
    groups: int = 0          # groups (ai_agg, ai_top_k), left rows (ai_join) or batches (cascades)
    requests: int = 0        # requests built by the plan (sent, or answered from the cache)
    cache_hits: int = 0
    naive_requests: int = 0  # what the one-request-per-row (or per-pair) plan would have built
    figures: dict[str, float] = field(default_factory=dict)


class Plans:
    """The recent PlanRecords of a registration, one per (query, function, endpoint, plan)."""

    def __init__(self) -> None:
        self._records: collections.OrderedDict[tuple, PlanRecord] = collections.OrderedDict()
        self._lock = threading.Lock()

    def record(self, query: Query, statement: str, function: str, endpoint: str, plan: str) -> PlanRecord:
        key = (query.number, statement, function, endpoint, plan)
        with self._lock:
            found = self._records.get(key)
            if found is None:
                found = self._records[key] = PlanRecord(key[0], statement, function, endpoint, plan)
                if len(self._records) > PLAN_HISTORY:
                    self._records.popitem(last=False)
            return found

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            records = list(self._records.values())
        return [{"query_id": r.query_id, "statement": r.statement, "function": r.function, "endpoint": r.endpoint,
                 "plan": r.plan, "rows": r.rows, "groups": r.groups, "requests": r.requests,
                 "cache_hits": r.cache_hits, "naive_requests": r.naive_requests,
                 "figures": {k: float(v) for k, v in r.figures.items()}} for r in records]


class ManyRow:
    """Per registration: the plans kept, and one token counter per model (loading one reads a vocabulary)."""

    def __init__(self, registration: Registration) -> None:
        self.registration = registration
        self.plans = Plans()
        self._counters: dict[tuple, Callable[[str], int]] = {}

    def counter(self, endpoint: Endpoint) -> Callable[[str], int]:
        key = (endpoint.provider, endpoint.model)
        found = self._counters.get(key)
        if found is None:
            found = self._counters[key] = prompt_token_counter(endpoint)[0]
        return found


class Step:
    """One UDF call's requests: built through the registration (so each is the call ai_query would
    make), sent through the engine in rounds, or counted while estimating. Used as a context manager
    around the UDF call: the query counts as inside a call of its UDF until the block ends."""

    def __init__(self, manyrow: ManyRow, context: int, statement: str, txid: int) -> None:
        self.manyrow = manyrow
        self.registration = manyrow.registration
        self.context, self.statement, self.txid = context, statement, txid
        self.query: Query | None = None

    def __enter__(self) -> Step:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.query is not None:
            self.query.leave()

    @property
    def estimating(self) -> bool:
        return self.registration.estimator is not None

    def endpoint(self, name: Any, task: str, function: str) -> Endpoint:
        endpoint = lookup(self.registration.endpoints, name)
        if endpoint.task != task:
            raise ArgumentError(f"{function}: endpoint {endpoint.name!r} is a {endpoint.task} endpoint; "
                                f"it needs a {task} endpoint")
        return endpoint

    def call(self, endpoint: Endpoint, request: Any, options: str) -> tuple[Options, Call]:
        _, opts, call = self.registration.build(endpoint.name, orjson.dumps(request).decode(), options, None)
        return opts, call

    def run(self, calls: Sequence[Call], fail_fast: bool) -> list[Any]:
        """Answers (or AIQueryErrors) in order; with fail_fast the first error is raised. While
        estimating, the calls are counted and None returned for each."""
        if not calls:
            return []
        if self.estimating:
            self.registration.estimator.add(list(calls))
            return [None] * len(calls)
        engine, query = self.registration.engine, self.current_query()
        answers = engine.run(calls, fail_fast=fail_fast, query=query)
        if fail_fast:
            error = next((a for a in answers if isinstance(a, AIQueryError)), None)
            if error is not None:
                engine.end_query(query)  # the query fails: nothing more is sent for it
                raise error
        return answers

    def send(self, calls: Sequence[Call], fail_fast: bool, record: PlanRecord) -> list[Any]:
        """run(), counting the calls and their cache hits on the plan's record."""
        answers = self.run(calls, fail_fast)
        record.requests += len(calls)
        record.cache_hits += cached(answers)
        return answers

    def current_query(self) -> Query:
        """The engine's record of the query (its usage figures), entered until the block ends;
        reading ahead does not apply here."""
        if self.query is None:
            self.query = self.registration.start_query(self.context, self.statement, self.txid, 0)
        return self.query

    def planned(self, endpoint: Endpoint, requests: int, prompt_tokens: int, max_tokens: int | None) -> None:
        """While estimating: requests whose prompts depend on answers not known yet."""
        if requests:
            self.registration.estimator.plan(endpoint, requests, prompt_tokens, max_tokens)

    def record(self, function: str, endpoint: Endpoint, plan: str) -> PlanRecord:
        """The query's record of this function's plan; while estimating, a note in the estimate
        (and a record kept nowhere)."""
        if self.estimating:
            self.registration.estimator.note(endpoint.name, f"{function}: {plan}")
            return PlanRecord(None, self.statement, function, endpoint.name, plan)
        return self.manyrow.plans.record(self.current_query(), self.statement, function, endpoint.name, plan)


def answer_value(endpoint: Endpoint, answer: Any, opts: Options) -> Any:
    """The checked value of a step's answer (a JSON answer parsed); its error raised as it is."""
    if isinstance(answer, AIQueryError):
        raise answer
    value = answer_value_of(endpoint, answer, opts)
    return orjson.loads(value) if opts.expects_json and opts.output_type is None else value


def cached(answers: Sequence[Any]) -> int:
    return sum(1 for a in answers if isinstance(a, _wire.Answer) and a.cached)


def chat_options(options: str, function: str, endpoint: Endpoint, response_format: Any = None,
                 max_tokens: int | None = None) -> tuple[str, dict[str, Any]]:
    """The options text for a step's calls (the user's options, with this step's responseFormat and,
    when neither the call nor the endpoint sets one, max_tokens), and the options as a dict."""
    raw = orjson.loads(options)
    if raw.get("returnType") is not None or raw.get("details"):
        raise ArgumentError(f"{function}: returnType and details do not apply")
    params = dict(raw.get("modelParameters") or {})
    if max_tokens is not None and "max_tokens" not in params and "max_tokens" not in endpoint.model_parameters:
        params["max_tokens"] = max_tokens
    raw = {**raw, "modelParameters": params or None, "responseFormat": response_format}
    return orjson.dumps(raw).decode(), raw


def answer_tokens(endpoint: Endpoint, raw_options: dict[str, Any]) -> int | None:
    """max_tokens of a step's answers, from the call's modelParameters or the endpoint's settings."""
    value = (raw_options.get("modelParameters") or {}).get("max_tokens", endpoint.model_parameters.get("max_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def messages(instruction: str, content: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": instruction}, {"role": "user", "content": content}]


def message_tokens(counter: Callable[[str], int], instruction: str) -> int:
    return counter(instruction) + 2 * MESSAGE_OVERHEAD


def numbered(texts: Sequence[str]) -> str:
    """Texts as one message, each opened by its number: [1] ..., [2] ..."""
    return "\n".join(f"[{i}] {text}" for i, text in enumerate(texts, 1))


NUMBER_OVERHEAD = 4  # tokens of "[12] " and the newline before the next text


def split_text(text: str, tokens: int, budget: int) -> list[str]:
    """A text longer than `budget` tokens cut into pieces of at most about `budget` tokens, at spaces
    where it can be: nothing of it is dropped."""
    pieces = math.ceil(tokens / budget)
    if pieces <= 1:
        return [text]
    size = math.ceil(len(text) / pieces)
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            end = space + 1 if space > start else end
        out.append(text[start:end])
        start = end
    return out


def pack(texts: Sequence[str], sizes: Sequence[int], budget: int, at_least: int = 1) -> list[list[int]]:
    """Consecutive texts packed into groups (of indices) of at most `budget` tokens, each of at least
    `at_least` texts (so combining always makes progress), the last one possibly smaller."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if current and used + size > budget and len(current) >= at_least:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += size
    if current:
        if len(current) < at_least and groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def as_json(value: Any, fail_on_error: bool, error: AIQueryError | None = None) -> str:
    """A row's JSON answer in ai_query's shape: the value, or with failOnError => false the STRUCT."""
    if fail_on_error:
        if error is not None:
            raise error
        return orjson.dumps(value).decode()
    return orjson.dumps({"response": value, "errorMessage": None if error is None else str(error)}).decode()
