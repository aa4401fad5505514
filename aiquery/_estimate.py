"""What a statement would cost, found without calling any model: `aiquery.estimate(con, sql)`.

The statement runs on a cursor of the connection, inside a transaction that is rolled back, with
ai_query replaced by a version that records each row's request and answers NULL. Per endpoint it
reports the rows that would be sent, the distinct requests among them, how many the response cache
already holds, prompt tokens, cost and time:

* Prompt tokens come from the model's own tokenizer for the built-in models; for others, from
  the approximation of 4 characters per token (plus 4 per chat message), as `token_count` says.
* Completion tokens are the endpoint's average so far in this process when it has answered
  before, else `max_tokens` when the call sets it, else unknown (NULL, and the cost covers the
  prompt only, as `cost_covers` says).
* Cached prompt tokens (read from the provider's prompt cache, at the cached_input price) are the
  share the endpoint reported cached so far in this process, else none.
* Rows in batch mode (`batched`) cost the price's batch multiplier times the online price, and
  take up to the batch's completion window: time covers the online requests only.
* Time is requests to send over throughput: `max_concurrency` requests per latency (the endpoint's
  median so far, else an assumed ASSUMED_LATENCY), capped by requests_per_minute and
  tokens_per_minute.
* ai_query answers NULL while estimating, so rows that a filter on an answer would drop later
  are counted as sent: an estimate errs on the side of more.
* The many-row functions (ai_agg, ai_top_k, ai_join, the cascades: aiquery/_manyrow.py) add the
  requests of steps whose prompts depend on answers not known yet as planned ones (counted at
  their largest), and a note of the plan each chose, in `plans`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import duckdb

from ._config import Endpoint
from ._calls import Call
from ._models import token_counter
from ._usage import Price, price_of

ASSUMED_LATENCY = 1.0  # seconds per request when the endpoint has not answered in this process
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4   # tokens a chat message adds besides its content (role, separators)


@dataclass
class EndpointEstimate:
    endpoint: str
    model: str | None
    rows: int = 0                  # rows whose ai_query call would send a request (NULL requests send none)
    distinct_requests: int = 0
    cache_hits: int = 0
    requests_to_send: int = 0      # HTTP requests: embedding texts are batched
    batched: int = 0               # of the requests to send, those going through the batch API
    prompt_tokens: int = 0         # of the requests to send
    cached_tokens: int = 0         # of prompt_tokens, those expected from the provider's prompt cache
    token_count: str = ""          # how prompt_tokens were counted
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cost_covers: str | None = None
    seconds: float | None = None
    time_basis: str = ""
    plans: list[str] = field(default_factory=list)  # what the many-row functions chose, for this endpoint


@dataclass
class _Planned:
    """Requests of a many-row function whose prompts are not known before running."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int | None = 0  # None: some without max_tokens


@dataclass
class Estimator:
    calls: dict[str, dict[bytes, Call]] = field(default_factory=dict)  # endpoint -> distinct requests
    rows: dict[str, int] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    planned: dict[str, _Planned] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, calls: list[Call]) -> None:
        for call in calls:
            name = call.endpoint.name
            self.rows[name] = self.rows.get(name, 0) + 1
            self.calls.setdefault(name, {})[call.key] = call
            self.endpoints[name] = call.endpoint

    def plan(self, endpoint: Endpoint, requests: int, prompt_tokens: int, max_tokens: int | None) -> None:
        planned = self.planned.setdefault(endpoint.name, _Planned())
        self.endpoints[endpoint.name] = endpoint
        planned.requests += requests
        planned.prompt_tokens += prompt_tokens
        if planned.completion_tokens is not None:
            planned.completion_tokens = None if max_tokens is None else planned.completion_tokens + requests * max_tokens

    def note(self, endpoint: str, text: str) -> None:
        notes = self.notes.setdefault(endpoint, [])
        if text not in notes:
            notes.append(text)


def prompt_token_counter(endpoint: Endpoint) -> tuple[Callable[[str], int], str]:
    """Counts a text's tokens: with the model's own tokenizer for a built-in model, else approximately."""
    counter = token_counter(endpoint.model) if endpoint.provider == "local" else None
    if counter is not None:
        return counter, f"{endpoint.model} tokenizer"
    return (lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)), f"approximate: {CHARS_PER_TOKEN} characters per token"


def _prompt_text(call: Call) -> tuple[str, int]:
    """The text a request's prompt tokens come from, and the messages' overhead in tokens."""
    if call.text is not None:
        return call.text, 0
    if "messages" in call.body:
        messages = call.body["messages"]
        parts = [m.get("content") if isinstance(m.get("content"), str) else
                 " ".join(p.get("text", "") for p in m.get("content") or [] if isinstance(p, dict))
                 for m in messages]
        return "\n".join(parts), MESSAGE_OVERHEAD * len(messages)
    for name in ("prompt", "dataframe_records"):
        if name in call.body:
            value = call.body[name]
            return value if isinstance(value, str) else str(value), 0
    return "", 0


def report(estimator: Estimator, engine: Any, prices: dict[str, Price]) -> list[EndpointEstimate]:
    observed = {name: usage for name, _, usage in engine.usage()}
    out = []
    for name, endpoint in sorted(estimator.endpoints.items()):
        calls = list(estimator.calls.get(name, {}).values())
        planned = estimator.planned.get(name, _Planned())
        est = EndpointEstimate(name, endpoint.model, estimator.rows.get(name, 0) + planned.requests,
                               len(calls) + planned.requests, plans=estimator.notes.get(name, []))
        cache = calls[0].cache if calls else None
        cached = cache.get_many([c.key for c in calls if c.cache is not None], count_hits=False) if cache else {}
        est.cache_hits = len(cached)
        to_send = [c for c in calls if c.key not in cached]
        if endpoint.task == "embeddings":
            groups: dict[bytes, int] = {}
            for c in to_send:
                groups[c.payload] = groups.get(c.payload, 0) + 1
            est.requests_to_send = sum(math.ceil(n / endpoint.batch_size) for n in groups.values())
        else:
            est.requests_to_send = len(to_send)
        est.requests_to_send += planned.requests
        counter, est.token_count = prompt_token_counter(endpoint)
        batch_prompt = 0
        for c in to_send:
            text, overhead = _prompt_text(c)
            tokens = overhead + counter(text)
            est.prompt_tokens += tokens
            if c.batch:
                est.batched += 1
                batch_prompt += tokens
        est.prompt_tokens += planned.prompt_tokens
        usage = observed.get(name)
        answered = usage.answered if usage else 0
        cached_share = usage.cached_tokens / usage.prompt_tokens if usage and usage.prompt_tokens else 0.0
        est.cached_tokens = round(est.prompt_tokens * cached_share)
        if endpoint.task == "embeddings":
            est.completion_tokens = 0
        elif answered and usage.completion_tokens:
            est.completion_tokens = round(usage.completion_tokens / answered * (len(to_send) + planned.requests))
        elif to_send and isinstance(to_send[0].body.get("max_tokens"), int) and planned.completion_tokens is not None:
            est.completion_tokens = sum(c.body.get("max_tokens") or 0 for c in to_send) + planned.completion_tokens
        elif not to_send and planned.completion_tokens is not None:
            est.completion_tokens = planned.completion_tokens
        price = price_of(endpoint.model, prices)
        if price is not None:
            cost = price.tokens_cost(est.prompt_tokens, est.cached_tokens, est.completion_tokens or 0)
            batch_share = batch_prompt / est.prompt_tokens if est.prompt_tokens else 0.0
            est.cost_usd = cost * (1 - batch_share) + cost * batch_share * price.batch
            est.cost_covers = "prompt and completion" if est.completion_tokens is not None else "prompt tokens only"
        latencies = list(usage.latencies) if usage else []
        latency = statistics.median(latencies) if latencies else ASSUMED_LATENCY
        est.time_basis = (f"median latency so far {latency:.2f} s" if latencies
                          else f"assumed latency {ASSUMED_LATENCY:g} s")
        per_second = endpoint.max_concurrency / latency
        if endpoint.requests_per_minute:
            per_second = min(per_second, endpoint.requests_per_minute / 60)
        if endpoint.tokens_per_minute and est.requests_to_send and est.prompt_tokens:
            per_second = min(per_second, endpoint.tokens_per_minute / 60 / (est.prompt_tokens / est.requests_to_send))
        est.seconds = (est.requests_to_send - est.batched) / per_second
        if est.batched:
            est.time_basis += f"; {est.batched:,} batched rows take up to {endpoint.batch_completion_window} more"
        out.append(est)
    return out


def estimate(con: duckdb.DuckDBPyConnection, sql: str) -> list[EndpointEstimate]:
    """Per endpoint, what running `sql` on `con` would send and cost; calls no model, changes no data.

    The statement runs on a cursor of `con`, through `con`'s own ai_query function (DuckDB shares
    functions between a connection and its cursors), which counts instead of sending while this
    runs: a query running on `con` at the same moment would be counted too."""
    from ._registration import registration_of

    registration = registration_of(con)
    estimator = registration.estimator = Estimator()
    cursor = con.cursor()  # with the aiquery macros (aiquery._registration wraps cursor())
    try:
        cursor.execute("BEGIN TRANSACTION")
        try:
            for statement in duckdb.extract_statements(sql):
                result = cursor.execute(statement)
                while result.fetchmany(10_000):  # every row computed, none kept
                    pass
        finally:
            cursor.execute("ROLLBACK")
    finally:
        registration.estimator = None
        cursor.close()
    return report(estimator, registration.engine, registration.prices)
