"""Memory under a long job: does the client's memory stay bounded while ai_query streams 1M rows?

Standalone (not part of run.py). Every measurement runs in a fresh client process
(`clients.isolated`) against a server in a process of its own (`servers.py`): by default the fake
server (tests/fakeserver.py through serve_fake.py) with no latency, or nginx answering at once
(`--server nginx`, faster, every answer "ok"). For each row count and cache setting, the client:

1. connects (endpoint `ai`, max_concurrency 256) with `cache=False`, or with a response cache file
   in a fresh temp dir, and creates the source table `src` (id, 'row ' || id), in memory;
2. warms up: the same query over 2,000 other prompts (starts the engine's loop, the HTTP child
   process, the cache's writer), then takes the baseline RSS;
3. runs the query, sampling RSS every 20 ms (psutil, else /proc/PID/status VmRSS): its own and the
   HTTP child process's; with the cache on, also while the cache finishes writing afterwards.

Queries (`--query`):
- `count`: `SELECT count(*) FILTER (WHERE ai_query('ai', prompt) = 'echo: ' || prompt) FROM src`
  keeps nothing: it counts the right answers (nginx: `= 'ok'`), so every row is checked;
- `ctas`: `CREATE TABLE scored AS SELECT id, ai_query('ai', prompt) AS answer FROM src`, the
  benchmarks' usual statement. Its result is a table in memory, which grows with the rows by
  design; the table shows DuckDB's own accounting of it (`duckdb_memory()`) next to the growth.

Reported per run: peak RSS growth over the baseline (client process, and the HTTP child), RSS
growth left at the end, rows/s, right rows, requests sent (the engine's count). "bounded?" asks,
per query and cache setting, whether the peak growth levels off: a leak that grows with the rows
streamed keeps one slope (MB per 100k rows) from run to run, while a bounded client's slope falls
towards zero once its buffers are full. It is "yes" when the slope between the two largest runs
is under a quarter of the slope between the two before, or their growths differ by under 50 MB
(noise: allocator arenas, DuckDB's buffers). Only `count` can be bounded; `ctas` keeps its table.

    python benchmarks/memory.py                      # 100k, 500k, 1M rows, cache off and on: ~12 min
    python benchmarks/memory.py --rows 20000 50000 200000 --cache off   # quicker: ~1.5 min
    python benchmarks/memory.py --query ctas --server nginx
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from clients import isolated  # noqa: E402
from servers import FakeServerProcess, Nginx  # noqa: E402
from workloads import MODEL  # noqa: E402

WARMUP_ROWS = 2_000
SAMPLE_EVERY_S = 0.02
SERVER_POLL_S = 5.0  # the fake server records every request: read and forget them this often
BOUND_SLACK_MB = 50.0
MB = 1024 * 1024


# ---------------------------------------------------------------- the client process


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except Exception:  # the process is gone
        return 0
    return 0


def child_pids(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children()]
    except ImportError:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    text = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                    pids.append(int(entry.name))
        return pids


class Sampler(threading.Thread):
    """Samples RSS of this process and of its children (the HTTP child) until stopped."""

    def __init__(self) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = os.getpid()
        self.peak = self.children_peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(SAMPLE_EVERY_S)

    def sample(self) -> tuple[int, int]:
        own = rss_bytes(self.pid)
        children = sum(rss_bytes(p) for p in child_pids(self.pid))
        self.peak, self.children_peak = max(self.peak, own), max(self.children_peak, children)
        self.samples += 1
        return own, children

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def measure(base_url: str, *, rows: int, cache: bool, query: str, expected: str) -> dict:
    """One run in a fresh process; see the module docstring. `expected` is the SQL of a right answer."""
    import gc

    import aiquery
    from aiquery import _cache

    workdir = tempfile.mkdtemp(prefix="aiquery-memory-")
    cache_file = os.path.join(workdir, "responses.sqlite3") if cache else False
    con = aiquery.connect(endpoints={"ai": {"base_url": base_url, "model": MODEL, "max_concurrency": 256}},
                          cache=cache_file, progress=False)
    con.execute(f"CREATE TABLE src AS SELECT range AS id, 'row ' || range AS prompt FROM range({rows})")
    con.execute(f"CREATE TABLE warm AS SELECT range AS id, 'warm ' || range AS prompt FROM range({WARMUP_ROWS})")

    def statement(table: str) -> str:
        if query == "count":
            return f"SELECT count(*) FILTER (WHERE ai_query('ai', prompt) = {expected}) FROM {table}"
        return f"CREATE OR REPLACE TABLE scored AS SELECT id, prompt, ai_query('ai', prompt) AS answer FROM {table}"

    con.execute(statement("warm")).fetchall()
    if cache:
        _cache.open_cache(cache_file).flush(timeout=60)
    con.execute("DROP TABLE IF EXISTS scored")
    gc.collect()
    sampler = Sampler()
    baseline, children_baseline = sampler.sample()
    sampler.peak = sampler.children_peak = 0
    duckdb_before = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
    requests_before = sum(s.requests for s in aiquery.Engine.shared().stats().values())
    sampler.start()
    start = time.perf_counter()
    try:
        result = con.execute(statement("src")).fetchall()
        seconds = time.perf_counter() - start
        if query == "count":
            ok = result[0][0]
        else:
            ok = con.execute(f"SELECT count(*) FILTER (WHERE answer = {expected}) FROM scored").fetchone()[0]
        flushed = _cache.open_cache(cache_file).flush(timeout=300) if cache else True
    except Exception as exc:
        sampler.stop()
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    sampler.stop()
    duckdb_after = con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
    stats = aiquery.Engine.shared().stats().values()
    final, _ = sampler.sample()
    out = {
        "rows": rows, "cache": cache, "query": query, "seconds": seconds, "ok_rows": ok,
        "baseline_mb": baseline / MB, "peak_growth_mb": (sampler.peak - baseline) / MB,
        "final_growth_mb": (final - baseline) / MB,
        "child_baseline_mb": children_baseline / MB,
        "child_peak_growth_mb": (sampler.children_peak - children_baseline) / MB,
        "duckdb_growth_mb": ((duckdb_after or 0) - (duckdb_before or 0)) / MB,
        "requests": sum(s.requests for s in stats) - requests_before,
        "samples": sampler.samples, "flushed": flushed,
    }
    con.close()
    _cache.close_all()
    shutil.rmtree(workdir, ignore_errors=True)  # a million cached answers: about 100 MB
    return out


# ---------------------------------------------------------------- the harness


def run_one(server, kind: str, rows: int, cache: bool, query: str, timeout: float) -> dict:
    expected = "'ok'" if kind == "nginx" else "'echo: ' || prompt"
    kwargs = {"base_url": server.openai_base, "rows": rows, "cache": cache, "query": query, "expected": expected}
    if kind == "nginx":
        before = server.requests_served()
        outcome = isolated(measure, kwargs, timeout=timeout)
        outcome["server_requests"] = server.requests_served() - before
        return outcome
    # The fake server records every request: make it forget them now and then, so that a million
    # records never pile up there (its memory is not what is measured, but it shares the machine).
    outcome: dict = {}
    done = threading.Event()

    def client() -> None:
        outcome.update(isolated(measure, kwargs, timeout=timeout))
        done.set()

    threading.Thread(target=client, daemon=True).start()
    while not done.wait(SERVER_POLL_S):
        server.reset()
    server.reset()
    return outcome


def verdicts(results: list[dict]) -> dict[tuple, str]:
    """Per (query, cache), from the three largest runs: does the peak growth level off?

    A leak that grows with the rows streamed keeps one slope (MB per 100k rows) from run to run;
    a bounded client's slope falls towards zero once its buffers are full. "yes" when the slope
    between the two largest runs is under a quarter of the slope before, or the growth between
    them is under 50 MB."""
    out = {}
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if "error" not in r:
            groups.setdefault((r["query"], r["cache"]), []).append(r)
    for key, runs in groups.items():
        runs = sorted(runs, key=lambda r: r["rows"])[-3:]
        if len(runs) < 2:
            continue
        *before, mid, large = ([None] + runs) if len(runs) == 2 else runs
        slope = (large["peak_growth_mb"] - mid["peak_growth_mb"]) / (large["rows"] - mid["rows"]) * 1e5
        text = (f"{mid['rows']:,} -> {large['rows']:,} rows: peak growth {mid['peak_growth_mb']:.0f} -> "
                f"{large['peak_growth_mb']:.0f} MB ({slope:+.1f} MB per 100k rows")
        earlier = before[0]
        if earlier is not None:
            slope_before = (mid["peak_growth_mb"] - earlier["peak_growth_mb"]) / (mid["rows"] - earlier["rows"]) * 1e5
            text += f"; {earlier['rows']:,} -> {mid['rows']:,} rows: {slope_before:+.1f} MB per 100k rows"
            bounded = slope < max(slope_before, 0) / 4
        else:
            bounded = False
        bounded = bounded or large["peak_growth_mb"] - mid["peak_growth_mb"] < BOUND_SLACK_MB
        out[key] = f"{'yes' if bounded else 'NO'}: {text})"
    return out


def table(results: list[dict]) -> str:
    lines = ["| query | cache | rows | rows/s | right rows | requests sent | baseline RSS | peak growth "
             "| growth at end | HTTP child peak growth | DuckDB's own growth |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r.get('query', '?')} | {'on' if r.get('cache') else 'off'} | {r.get('rows', 0):,} "
                         f"| error: {r['error'][:120]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['query']} | {'on' if r['cache'] else 'off'} | {r['rows']:,} | {r['rows'] / r['seconds']:,.0f} "
            f"| {r['ok_rows']:,} | {r['requests']:,} | {r['baseline_mb']:.0f} MB "
            f"| {r['peak_growth_mb']:+.0f} MB | {r['final_growth_mb']:+.0f} MB | {r['child_peak_growth_mb']:+.0f} MB "
            f"| {r['duckdb_growth_mb']:+.0f} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 500_000, 1_000_000])
    parser.add_argument("--cache", choices=["off", "on", "both"], default="both")
    parser.add_argument("--query", choices=["count", "ctas"], nargs="+", default=["count"])
    parser.add_argument("--server", choices=["fake", "nginx"], default="fake")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    args = parser.parse_args()
    caches = {"off": [False], "on": [True], "both": [False, True]}[args.cache]
    command = "python benchmarks/memory.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    server_cm = Nginx() if args.server == "nginx" else FakeServerProcess({"kind": "fixed", "seconds": 0})
    results = []
    started = time.perf_counter()
    with server_cm as server:
        for query in args.query:
            for cache in caches:
                for rows in sorted(args.rows):
                    r = run_one(server, args.server, rows, cache, query, args.timeout)
                    r.setdefault("rows", rows)
                    r.setdefault("cache", cache)
                    r.setdefault("query", query)
                    results.append(r)
                    if "error" in r:
                        print(f"{query} cache={cache} rows={rows:,}: error {r['error']}", file=sys.stderr, flush=True)
                    else:
                        print(f"{query} cache={'on' if cache else 'off'} rows={rows:,}: {r['seconds']:.1f} s, "
                              f"peak growth {r['peak_growth_mb']:+.0f} MB, child {r['child_peak_growth_mb']:+.0f} MB",
                              file=sys.stderr, flush=True)
    import platform

    import duckdb

    print(f"## Memory: {', '.join(f'{n:,}' for n in sorted(args.rows))} rows through ai_query\n")
    print(f"Command: `{command.strip()}`\n")
    print(f"Server: {args.server} ({'fake server, no latency' if args.server == 'fake' else 'nginx, fixed answer'}), "
          f"client max_concurrency 256; {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"duckdb {duckdb.__version__}; total {time.perf_counter() - started:.0f} s\n")
    print(table(results))
    print()
    for (query, cache), verdict in verdicts(results).items():
        print(f"- bounded? {query}, cache {'on' if cache else 'off'}: {verdict}")
    for r in results:
        if "error" not in r and r["ok_rows"] != r["rows"]:
            print(f"- WRONG: {r['query']} cache={r['cache']} rows={r['rows']:,}: only {r['ok_rows']:,} right rows")
        if "error" not in r and not r.get("flushed", True):
            print(f"- the cache had not finished writing 300 s after the {r['rows']:,}-row query")


if __name__ == "__main__":
    main()
