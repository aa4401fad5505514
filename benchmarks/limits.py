"""How the adaptive concurrency limit meets servers that refuse with 429 (docs/RELIABILITY.md, section 1).

    python benchmarks/limits.py

Each scenario runs `ai_query` over N rows (failOnError => false) with max_concurrency 256 against the
fake server in this process. "limit C" is a server that refuses (429, Retry-After: 0) requests beyond
C in flight; "10% refused at random" adds a 429 to one row in ten, once. Reports the time against the
ideal (rows x latency / C), the share of requests answered 429, and the server's peak in flight.
Figures are reported, never asserted; the tests assert what must hold (tests/test_limits.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiquery  # noqa: E402
from fakeserver import FakeServer  # noqa: E402

RANDOM_429 = "CASE WHEN hash(i) % 10 = 0 THEN ' [[status=429 times=1 retry_after=0.05]]' ELSE '' END"
SCENARIOS = [  # (server limit, latency s, rows, 10% refused at random)
    (20, 0.02, 2000, False), (50, 0.1, 3000, False), (5, 0.02, 1000, False),
    (20, 0.02, 2000, True), (50, 0.1, 3000, True),
]


def run(limit: int, latency: float, rows: int, noise: bool) -> str:
    with FakeServer(api_key="k", latency=latency, max_concurrency=limit, retry_after="0") as server:
        endpoint = {"base_url": server.openai_base, "model": "m", "api_key_env": "BENCH_KEY", "max_concurrency": 256}
        suffix = RANDOM_429 if noise else "''"
        start = time.perf_counter()
        with aiquery.connect(endpoints={"chat": endpoint}, cache=False, progress=False) as con:
            answers = con.sql(f"SELECT ai_query('chat', 'row ' || i || {suffix}, failOnError => false) AS a "
                              f"FROM range({rows}) t(i)").fetchall()
        seconds = time.perf_counter() - start
        refused = sum(r.status == 429 for r in server.requests)
        right = sum(a.get("errorMessage") is None for (a,) in answers)
        name = f"limit {limit}, {rows:,} rows, latency {latency:g} s" + (", 10% refused at random" if noise else "")
        return (f"| {name} | {seconds:.1f} s (ideal {rows * latency / limit:.1f} s) | {100 * refused / rows:.1f}% "
                f"| {server.peak_in_flight} | {right:,} of {rows:,} |")


def main() -> None:
    os.environ["BENCH_KEY"] = "k"
    print("| server | time | 429s / rows | peak in flight | rows answered |\n|---|---|---|---|---|")
    for scenario in SCENARIOS:
        print(run(*scenario), flush=True)


if __name__ == "__main__":
    main()
