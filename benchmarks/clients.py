"""The client under test, aiquery through SQL, and `isolated`, which runs any client in a fresh process.

Every measurement runs in a process of its own: no earlier run's threads, sessions, caches or
garbage are around, and the harness process does nothing but wait while the client works.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from workloads import MODEL


def isolated(fn: Callable[..., dict], kwargs: dict[str, Any], *, timeout: float,
             on_start: Callable[[int], Any] | None = None) -> dict:
    """fn(**kwargs) in a fresh (spawned) process; {"error": ...} if it raised or ran past `timeout` s.

    on_start(pid) is called once the process runs (used to attach a profiler).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, fn, kwargs), daemon=True)
    process.start()
    sender.close()
    try:
        if on_start is not None:
            on_start(process.pid)
        if receiver.poll(timeout):
            return receiver.recv()
        return {"error": f"timed out after {timeout:.0f} s"}
    except EOFError:
        return {"error": f"client process died (exit code {process.exitcode})"}
    finally:
        receiver.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)


def _child(sender, fn: Callable[..., dict], kwargs: dict) -> None:
    try:
        result = fn(**kwargs)
    except BaseException as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:500], "traceback": traceback.format_exc()}
    sender.send(result)
    sender.close()


def run_aiquery(base_url: str, *, rows: int, endpoint: dict, call: str, check: str,
                source: str = "table", workdir: str | None = None, cache: str | bool = False) -> dict:
    """Times `CREATE TABLE scored AS SELECT id, <call> AS answer FROM <source>` on a fresh connection.

    `endpoint` holds the settings of the endpoint named "ai"; `check` is a SQL condition on `id` and
    `answer` that a correct row satisfies. Returns {"seconds", "rows", "ok_rows"} (plus "error" if
    the query failed). Source `table` is a native DuckDB table, `parquet` a file written by COPY with
    2048-row row groups, `pandas` a DataFrame found by DuckDB's replacement scan.

    `cache` is False (no response cache: every run sends every row, as a re-run would otherwise be
    all hits) or the path of a cache file. With a file, once the query is timed the process waits
    until every answer and hit count is committed (the cache's writer thread would otherwise die
    with the process) and adds "flush_seconds", that wait. Every result also has "requests",
    "cache_hits", "retries", "throttled" and "errors", the engine's own counts, and "cpu_seconds": the CPU time of this process (all its
    threads; not the HTTP child process) during the query and that wait.
    """
    import aiquery

    con = aiquery.connect(endpoints={"ai": {"base_url": base_url, "model": MODEL, **endpoint}}, cache=cache)
    prompts = f"SELECT range AS id, 'row ' || range AS prompt FROM range({int(rows)})"
    if source == "table":
        con.execute(f"CREATE TABLE prompts AS {prompts}")
        from_sql = "prompts"
    elif source == "parquet":
        path = os.path.join(workdir, "prompts.parquet")
        con.execute(f"COPY ({prompts}) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 2048)")
        from_sql = f"'{path}'"
    elif source == "pandas":
        import pandas as pd

        prompts_df = pd.DataFrame({"id": range(rows), "prompt": [f"row {i}" for i in range(rows)]})  # noqa: F841
        from_sql = "prompts_df"  # DuckDB's replacement scan finds the local variable by name
    else:
        raise ValueError(f"unknown source {source!r}")

    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        con.execute(f"CREATE TABLE scored AS SELECT id, {call} AS answer FROM {from_sql}")
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        ok = con.execute(f"SELECT count(*) FILTER (WHERE {check}) FROM scored").fetchone()[0]
    except Exception as exc:  # reported, not raised: a failing target is a result too
        return {"seconds": time.perf_counter() - start, "rows": rows, "ok_rows": 0,
                "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        con.close()
    result = {"seconds": seconds, "rows": rows, "ok_rows": ok}
    if cache:
        from aiquery._cache import open_cache  # the process's one ResponseCache for that file

        flush_start, cpu_start = time.perf_counter(), time.process_time()
        if not open_cache(cache).flush(timeout=120):
            result["error"] = "the response cache did not finish writing within 120 s"
        result["flush_seconds"] = time.perf_counter() - flush_start
        cpu_seconds += time.process_time() - cpu_start
    result["cpu_seconds"] = cpu_seconds
    stats = aiquery.Engine.shared().stats().values()
    for figure in ("requests", "cache_hits", "retries", "throttled", "errors"):
        result[figure] = sum(getattr(s, figure) for s in stats)
    return result
