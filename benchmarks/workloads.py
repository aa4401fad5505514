"""The workloads: per-row latencies, the server-side latency models, and the ideal makespan.

Every chat prompt is `row N`. A row's latency is a pure function of (seed, N), so the fake server
(another process) and the harness agree on it without talking: the server draws it when the request
arrives, the harness recomputes it to build the ideal schedule and checks the two agree.
"""

from __future__ import annotations

import heapq
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence

MODEL = "bench-model"  # the "model" every client sends; the fake server echoes it

# Benchmark 1's latency distribution: lognormal, median 0.3 s, sigma 1, clipped to 0.05-10 s.
MEDIAN_S = 0.3
SIGMA = 1.0
MIN_S, MAX_S = 0.05, 10.0
SEED = 20240601

# Benchmark 3's embeddings server cost: a fixed part plus a part per input in the request.
EMBED_BASE_S = 0.050
EMBED_PER_INPUT_S = 0.0002

_ROW = re.compile(r"row (\d+)")


def prompt(row_id: int) -> str:
    return f"row {row_id}"


def expected_answer(row_id: int) -> str:
    """What the fake server's chat route answers to `prompt(row_id)`."""
    return "echo: " + prompt(row_id)


def row_latency(seed: int, row_id: int) -> float:
    """Row `row_id`'s server latency in seconds: one lognormal draw from a per-row generator."""
    draw = random.Random(seed * 1_000_003 + row_id).lognormvariate(math.log(MEDIAN_S), SIGMA)
    return min(MAX_S, max(MIN_S, draw))


def row_latencies(seed: int, rows: int) -> list[float]:
    return [row_latency(seed, i) for i in range(rows)]


def chat_row_id(body: dict) -> int | None:
    """The N of `row N` in a chat body's last message, or None if the body is not one of ours."""
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages else None
    match = _ROW.search(content) if isinstance(content, str) else None
    return int(match[1]) if match else None


def latency_model(spec: dict) -> Callable[[dict], float]:
    """The fake server's latency callable (request body -> seconds) described by `spec`.

    `{"kind": "rows", "seed": S}`: row_latency(S, N) for the chat prompt `row N`;
    `{"kind": "fixed", "seconds": L}`; `{"kind": "embeddings"}`: EMBED_BASE_S + EMBED_PER_INPUT_S per input;
    `{"kind": "faults", "seconds": L}`: L, except 0 for a chat prompt with a 429 directive: a rate
    limiter refuses at once, before any model runs.
    """
    kind = spec["kind"]
    if kind == "rows":
        seed = spec["seed"]

        def rows(body: dict) -> float:
            row_id = chat_row_id(body)
            return 0.0 if row_id is None else row_latency(seed, row_id)
        return rows
    if kind == "fixed":
        seconds = float(spec["seconds"])
        return lambda body: seconds
    if kind == "faults":
        seconds = float(spec["seconds"])

        def faults(body: dict) -> float:
            messages = body.get("messages") or []
            content = messages[-1].get("content") if messages else None
            return 0.0 if isinstance(content, str) and "[[status=429" in content else seconds
        return faults
    if kind == "embeddings":
        def embeddings(body: dict) -> float:
            inputs = body.get("input")
            return EMBED_BASE_S + EMBED_PER_INPUT_S * (len(inputs) if isinstance(inputs, list) else 1)
        return embeddings
    raise ValueError(f"unknown latency model {kind!r}")


def ideal_makespan(latencies: Iterable[float], slots: int) -> float:
    """Time for `slots` perfect workers to serve the rows in order, each row starting the moment a slot frees.

    This is reachable (unlike sum/slots): the last rows' latencies still have to drain.
    """
    free_at = [0.0] * slots  # a min-heap of the times each slot becomes free
    for latency in latencies:
        heapq.heapreplace(free_at, free_at[0] + latency)
    return max(free_at)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
