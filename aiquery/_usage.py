"""What requests cost: counts, token usage, latency and estimated cost, per endpoint and per query.

The engine records into `Usage` objects on its loop thread: one per endpoint for the life of the
engine, and one per endpoint for each query (kept for the last QUERY_HISTORY queries). SQL reads
them through `aiquery_usage()` and `aiquery_query_usage()` (aiquery/sql/usage.sql).

Cost is tokens times a price in USD per million tokens, from `[prices."MODEL"]` tables in the
config file (input = ..., output = ..., cached_input = ..., batch = ...) over the built-in PRICES
below. Prices change: the built-in ones are list prices noted in November 2026, for estimates
only; a model with no price has a NULL cost, never a made-up one.

    cost = ((prompt - cached) * input + cached * cached_input + completion * output) / 1e6

with cached_input = input when the price has none (no discount is assumed), and the tokens of
rows answered through a provider's batch API (aiquery/_batch.py) times `batch` (0.5 for the
providers whose prices are built in; 1.0, no discount, when a config price does not say).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any

from ._errors import AIQueryError, HTTPStatusError, OutputError, RequestTimeout, ResponseError, TransportError

LATENCY_SAMPLES = 10_000  # latencies kept per Usage for the percentiles (the most recent ones)
QUERY_HISTORY = 100       # finished queries whose usage stays readable


@dataclass(frozen=True)
class Price:
    input: float   # USD per million prompt tokens
    output: float  # USD per million completion tokens
    cached_input: float | None = None  # USD per million prompt tokens read from the provider's prompt cache
    batch: float = 1.0  # multiplier for requests sent through the provider's batch API

    def tokens_cost(self, prompt: int, cached: int, completion: int) -> float:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1e6


PRICES: dict[str, Price] = {  # OpenAI's list prices, its batch API at half of them
    "gpt-4o-mini": Price(0.15, 0.60, cached_input=0.075, batch=0.5),
    "gpt-4o": Price(2.50, 10.00, cached_input=1.25, batch=0.5),
    "gpt-4.1-mini": Price(0.40, 1.60, cached_input=0.10, batch=0.5),
    "gpt-4.1-nano": Price(0.10, 0.40, cached_input=0.025, batch=0.5),
    "text-embedding-3-small": Price(0.02, 0.0, batch=0.5),
    "text-embedding-3-large": Price(0.13, 0.0, batch=0.5),
    # the built-in models run here: they cost nothing but time
    "smollm2-135m-instruct": Price(0.0, 0.0),
    "all-minilm-l6-v2": Price(0.0, 0.0),
    "minilm-zero-shot": Price(0.0, 0.0),
}


def error_kind(exc: BaseException) -> str:
    """A short name for what went wrong, for counting: http_429, timeout, connection, bad_response..."""
    if isinstance(exc, HTTPStatusError):
        return f"http_{exc.status}"
    if isinstance(exc, RequestTimeout):
        return "timeout"
    if isinstance(exc, TransportError):
        return "connection"
    if isinstance(exc, ResponseError):
        return "bad_response"
    if isinstance(exc, OutputError):
        return "bad_output"
    if isinstance(exc, AIQueryError):
        return type(exc).__name__
    return "other"


@dataclass
class Usage:
    requests: int = 0           # HTTP requests sent (retries included)
    answered: int = 0           # inputs answered (one per chat request, one per embedded text)
    cache_hits: int = 0         # inputs answered from the response cache, not sent
    cache_not_stored: int = 0   # answers the response cache could not store (a CacheWarning says why)
    retries: int = 0
    throttled: int = 0          # 429 answers
    errors: int = 0             # inputs that ended with an error, after retries
    error_kinds: collections.Counter = field(default_factory=collections.Counter)
    prompt_tokens: int = 0      # as the endpoint reported them in `usage`, cached ones included
    completion_tokens: int = 0
    cached_tokens: int = 0      # prompt tokens the provider read from its prompt cache
    batched: int = 0            # inputs answered through the provider's batch API
    batch_prompt_tokens: int = 0  # the batched inputs' share of the three token counts
    batch_cached_tokens: int = 0
    batch_completion_tokens: int = 0
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES))

    def answer(self, inputs: int, usage: dict[str, int], seconds: float | None, batch: bool = False) -> None:
        """Counts `inputs` answered with `usage`; `seconds` is the request's latency (None for a
        batch, whose rows have none of their own)."""
        self.answered += inputs
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        cached = usage.get("cached_tokens") or 0
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached
        if batch:
            self.batched += inputs
            self.batch_prompt_tokens += prompt
            self.batch_cached_tokens += cached
            self.batch_completion_tokens += completion
        if seconds is not None:
            self.latencies.append(seconds)

    def fail(self, inputs: int, exc: BaseException) -> None:
        self.errors += inputs
        self.error_kinds[error_kind(exc)] += inputs

    def cost(self, price: Price | None) -> float | None:
        if price is None:
            return None
        online = price.tokens_cost(self.prompt_tokens - self.batch_prompt_tokens,
                                   self.cached_tokens - self.batch_cached_tokens,
                                   self.completion_tokens - self.batch_completion_tokens)
        batch = price.tokens_cost(self.batch_prompt_tokens, self.batch_cached_tokens, self.batch_completion_tokens)
        return online + batch * price.batch

    def row(self, price: Price | None) -> dict[str, Any]:
        """The figures as SQL shows them."""
        latencies = sorted(self.latencies)

        def percentile(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, math.ceil(p * len(latencies)) - 1)] * 1000, 1)

        return {"requests": self.requests, "answered": self.answered, "cache_hits": self.cache_hits,
                "cache_not_stored": self.cache_not_stored, "retries": self.retries, "throttled": self.throttled,
                "errors": self.errors,
                "error_kinds": dict(self.error_kinds), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens, "batched": self.batched,
                "latency_p50_ms": percentile(0.5), "latency_p95_ms": percentile(0.95),
                "latency_p99_ms": percentile(0.99), "cost_usd": self.cost(price)}


def price_of(model: str | None, prices: dict[str, Price]) -> Price | None:
    if model is None:
        return None
    return prices.get(model) or PRICES.get(model)


def endpoint_rows(engine: Any, prices: dict[str, Price]) -> list[dict[str, Any]]:
    return [{"endpoint": name, "model": model, **usage.row(price_of(model, prices))}
            for name, model, usage in engine.usage()]


QUERY_STATUS = ("rows_done", "rows_total", "rows_total_estimated", "percent", "seconds_left", "deduplicated")


def query_rows(engine: Any, prices: dict[str, Price], status: Any) -> list[dict[str, Any]]:
    """One row per query and endpoint; `status(query)` gives the query's progress figures
    (aiquery/_progress.py query_status), the same on each of its rows."""
    rows, statuses = [], {}
    for query, name, model, usage in engine.query_usage():
        if query.number not in statuses:
            figures = status(query)
            statuses[query.number] = {**{k: figures[k] for k in QUERY_STATUS},
                                      "cost_projected_usd": figures["cost_projected"]}
        rows.append({"query_id": query.number, "statement": query.identity[2], "started": query.started,
                     "finished": query.finished, "read_ahead": query.read_ahead, "endpoint": name, "model": model,
                     **usage.row(price_of(model, prices)), **statuses[query.number]})
    return rows
