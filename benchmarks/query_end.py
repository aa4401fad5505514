"""Requests sent after a query has ended, counted at the server: the figures of docs/RELIABILITY.md §8.

Standalone (not part of run.py). Each scenario runs a client process against tests/fakeserver.py's
server on 127.0.0.1 (0.05 s latency, 64 in flight, 5,000 rows, read-ahead on) and ends its query
early. The client notes the moment the statement returned and then waits 3 s (longer than any idle
timer). A request that arrives at the server more than 0.05 s after that moment was sent after the
query had ended. `--code` runs the clients on another checkout, so one command measures before and after:

    python benchmarks/query_end.py
    git worktree add /tmp/before 612bef9 && python benchmarks/query_end.py --code /tmp/before

Scenarios:
- interrupt between batches: 20 interrupts at random moments of a query that also runs a Python
  function of the user (0.3 s a batch), so many land while DuckDB is outside ai_query;
- interrupt before the first batch: during the user's function on the first chunk (DuckDB then calls
  ai_query on that chunk without looking at its interrupt flag);
- DuckDB's own error: a division by zero on row 3,000;
- reader closed: a streamed result read for one batch, then closed;
- interrupt between reads: `con.interrupt()` while a streamed result waits to be read (5 times);
- a failing row: row 5 answers HTTP 400 while DuckDB runs 4 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fakeserver import FakeServer  # noqa: E402

CLIENT = textwrap.dedent("""
    import json, random, sys, threading, time
    import duckdb, aiquery
    base, scenario = sys.argv[1], sys.argv[2]
    con = aiquery.connect(endpoints={"chat": {"base_url": base, "model": "m", "max_concurrency": 64, "cache": False}},
                          cache=False)
    con.execute("CREATE TABLE t AS SELECT i FROM range(5000) r(i)")
    ends = []

    def run(sql, interrupt_after=None):
        if interrupt_after is not None:
            threading.Timer(interrupt_after, con.interrupt).start()
        try:
            con.execute(sql).fetchall()
        except duckdb.Error:
            pass
        ends.append(time.monotonic())

    if scenario == "interrupt between batches":
        con.create_function("user_step", lambda i: time.sleep(0.3) or i, ["BIGINT"], "BIGINT", type="arrow",
                            side_effects=True)
        rng = random.Random(7)
        for trial in range(20):
            run(f"CREATE OR REPLACE TABLE s AS SELECT ai_query('chat', 'trial {trial} row ' || i), user_step(i) FROM t",
                rng.uniform(0.05, 1.5))
            time.sleep(3)
    elif scenario == "interrupt before the first batch":
        con.create_function("user_step", lambda i: time.sleep(0.5) or i, ["BIGINT"], "BIGINT", type="arrow",
                            side_effects=True)
        run("CREATE TABLE s AS SELECT user_step(i) AS u, ai_query('chat', 'row ' || i) AS a FROM t", 0.15)
        time.sleep(3)
    elif scenario == "DuckDB's own error":
        run("CREATE TABLE s AS SELECT ai_query('chat', 'row ' || i) AS a, 1 // (i - 3000) AS boom FROM t")
        time.sleep(3)
    elif scenario == "reader closed":
        con.execute("CREATE TABLE big AS SELECT i FROM range(50000) r(i)")
        con.execute("SET streaming_buffer_size = '1KB'")
        reader = con.sql("SELECT ai_query('chat', 'streamed ' || i) AS a FROM big").to_arrow_reader(100)
        reader.read_next_batch()
        reader.close()
        ends.append(time.monotonic())
        time.sleep(3)
    elif scenario == "interrupt between reads":
        con.execute("CREATE TABLE big AS SELECT i FROM range(50000) r(i)")
        con.execute("SET streaming_buffer_size = '1KB'")
        for trial in range(5):
            reader = con.sql(f"SELECT ai_query('chat', 'paused {trial} ' || i) AS a FROM big").to_arrow_reader(100)
            reader.read_next_batch()
            con.interrupt()  # while the reader waits: no batch of the query is inside ai_query
            ends.append(time.monotonic())
            time.sleep(3)
            reader.close()
    elif scenario == "a failing row":
        con.execute("SET threads = 4")
        con.execute("CREATE TABLE big AS SELECT i FROM range(200000) r(i)")
        run("CREATE TABLE s AS SELECT ai_query('chat', 'row ' || i || CASE WHEN i = 5 THEN '[[status=400]]' "
            "ELSE '' END) FROM big")
        time.sleep(3)
    print(json.dumps(ends), flush=True)
""")
SCENARIOS = ["interrupt between batches", "interrupt before the first batch", "DuckDB's own error", "reader closed",
             "interrupt between reads", "a failing row"]
LATE = 0.05  # seconds after the statement returned: what arrives later was sent after it
QUIET = 3.0  # seconds each client waits after a statement returned, before the next one


def measure(code: Path, scenario: str) -> tuple[int, int, list[int]]:
    """(requests the server got, of them sent after their query had ended, the same per query)."""
    with FakeServer(latency=0.05) as server:
        env = {**os.environ, "PYTHONPATH": str(code)}
        done = subprocess.run([sys.executable, "-c", CLIENT, server.openai_base, scenario], capture_output=True,
                              text=True, env=env, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        ends = json.loads(done.stdout.strip().splitlines()[-1])
        arrivals = sorted(r.arrived for r in server.requests)
    late = [sum(end + LATE < t < end + QUIET for t in arrivals) for end in ends]
    return len(arrivals), sum(late), late


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout of aiquery whose clients run")
    args = parser.parse_args()
    print(f"code: {args.code}")
    for scenario in SCENARIOS:
        started = time.monotonic()
        total, late, per_query = measure(args.code, scenario)
        worst = f", per query: {sorted(per_query, reverse=True)[:5]} (worst 5)" if len(per_query) > 1 else ""
        print(f"{scenario}: {total:,} requests, {late:,} sent after the query ended{worst} "
              f"({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
