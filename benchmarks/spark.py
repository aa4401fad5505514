"""ai_query in Spark local mode against DuckDB on benchmark 1's workload: rows/s of each, and the ratio.

    python benchmarks/spark.py [--quick] [--rows N] [--trials N] [--output PATH]

One fake server (benchmark 1's heavy-tailed per-row latency, in a process of its own) serves every run.
DuckDB runs `CREATE TABLE scored AS SELECT id, ai_query('ai', prompt) ...` as benchmark 1 does; Spark
(local[2], aiquery.spark.register, the endpoint's 256 divided among its 2 workers) runs the same call
over a DataFrame of 2 partitions. Each run is a fresh process; the two alternate (DuckDB, Spark, Spark,
DuckDB, ...) and medians are compared. Spark's session start (the JVM) is timed apart from its query.
Needs Java 17 and pyspark. Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import report
import workloads
from clients import run_aiquery
from report import Line, Section
from run import AIQUERY_CHAT, ROWS_LATENCY, SLOTS, all_correct, chat_run, measured, median_run, rows_per_s, run_timeout
from servers import FakeServerProcess
from workloads import MODEL

FULL_ROWS, QUICK_ROWS = 20_000, 2_000  # benchmark 1's sizes
SPARK_CORES = 2                        # local[2]: 2 tasks (Python workers) at once, 128 slots each
SPARK_START_TIMEOUT_S = 180.0


def run_spark(base_url: str, *, rows: int, endpoint: dict, call: str, check: str) -> dict:
    """Times `SELECT count(*), count_if(<check>) FROM (SELECT id, <call> AS answer FROM t)` in a fresh
    SparkSession; `t` is spark.range(rows) in SPARK_CORES partitions with prompt 'row ' || id.

    Returns {"seconds" (the query only), "rows", "ok_rows", "session_seconds"} like run_aiquery.
    The count is there instead of an ORDER BY, whose sampling pass would run ai_query twice.
    """
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers inherit it when the session starts
    start = time.perf_counter()
    from pyspark.sql import SparkSession

    import aiquery.spark

    spark = (SparkSession.builder.master(f"local[{SPARK_CORES}]").appName("aiquery-bench")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", str(SPARK_CORES)).getOrCreate())
    try:
        spark.sparkContext.setLogLevel("OFF")
        session_seconds = time.perf_counter() - start
        spark.range(int(rows), numPartitions=SPARK_CORES).selectExpr("id", "'row ' || id AS prompt") \
            .createOrReplaceTempView("t")
        aiquery.spark.register(spark, endpoints={"ai": {"base_url": base_url, "model": MODEL, **endpoint}}, cache=False)
        start = time.perf_counter()
        try:
            counted, ok = spark.sql(f"SELECT count(*), count_if({check}) FROM "
                                    f"(SELECT id, {call} AS answer FROM t)").collect()[0]
        except Exception as exc:  # reported, not raised, as run_aiquery does
            return {"seconds": time.perf_counter() - start, "rows": rows, "ok_rows": 0,
                    "session_seconds": session_seconds, "error": f"{type(exc).__name__}: {exc}"[:500]}
        result = {"seconds": time.perf_counter() - start, "rows": rows, "ok_rows": ok,
                  "session_seconds": session_seconds}
        if counted != rows:
            result["error"] = f"Spark returned {counted:,} rows, not {rows:,}"
        return result
    finally:
        spark.stop()


def bench_spark(rows: int, trials: int) -> Section:
    section = Section(f"Spark local[{SPARK_CORES}] vs DuckDB: {rows:,} rows, C = {SLOTS}, lognormal latency "
                      f"(benchmark 1's workload)")
    clients = {"DuckDB": (run_aiquery, run_timeout(rows)),
               "Spark": (run_spark, run_timeout(rows) + SPARK_START_TIMEOUT_S)}
    runs: dict[str, list[tuple[dict, dict]]] = {name: [] for name in clients}
    ideal_s = None
    with FakeServerProcess(ROWS_LATENCY) as server:
        for round_ in range(trials):
            for name in list(clients) if round_ % 2 == 0 else list(reversed(clients)):  # D S, S D, D S, ...
                fn, timeout = clients[name]
                result, stats, ideal_s, notes = chat_run(server, name, fn, AIQUERY_CHAT, rows, timeout)
                runs[name].append((result, stats))
                section.notes += [f"round {round_ + 1}, {note}" for note in notes]
                seconds = result.get("seconds") or float("nan")
                line = (f"round {round_ + 1}, {name}: {measured(result)}, server peak in flight "
                        f"{stats['peak_in_flight']}, mean in flight {stats['busy_seconds'] / seconds:.0f}")
                if "session_seconds" in result:
                    line += f", session start {result['session_seconds']:.1f} s (not in the query's time)"
                section.notes.append(line)
                print(line, flush=True)

    medians = {name: median_run([r for r, _ in results]) for name, results in runs.items()}
    peaks = {name: "/".join(str(s["peak_in_flight"]) for _, s in results) for name, results in runs.items()}
    correct = {name: all(all_correct(r, s) for r, s in results) for name, results in runs.items()}
    duck, spark = rows_per_s(medians["DuckDB"]), rows_per_s(medians["Spark"])
    starts = sorted(r["session_seconds"] for r, _ in runs["Spark"] if "session_seconds" in r)
    ideal = f"ideal {ideal_s:.1f} s"
    labels = {"DuckDB": "DuckDB aiquery SQL, native table", "Spark": f"Spark local[{SPARK_CORES}], query only"}
    section.lines += [
        Line(f"{labels[name]} (median of {trials})", measured(medians[name]), ideal,
             ideal_s / medians[name]["seconds"] if medians[name].get("seconds") else None,
             f"peaks {peaks[name]}", correct[name]) for name in clients]
    section.lines += [
        Line("Spark rows/s / DuckDB rows/s", f"{spark:,.0f} rows/s", f"{duck:,.0f} rows/s (DuckDB)",
             spark / duck if duck else None),
    ]
    if starts:
        section.lines.append(Line(f"Spark session start (JVM), median of {len(starts)}",
                                  f"{starts[len(starts) // 2]:.1f} s", "-", None))
    latencies = workloads.row_latencies(workloads.SEED, rows)
    halves = [latencies[i * rows // SPARK_CORES:(i + 1) * rows // SPARK_CORES] for i in range(SPARK_CORES)]
    split = [workloads.ideal_makespan(h, SLOTS // SPARK_CORES) for h in halves]
    section.notes += [
        "the 'met?' column is correctness: every row answered right and exactly one request per row, in every run; "
        "the 'target' column lists the server's peak requests in flight, run by run",
        f"ideal = workloads.ideal_makespan with {SLOTS} slots shared by all rows; with the rows split into Spark's "
        f"{SPARK_CORES} partitions, {SLOTS // SPARK_CORES} slots each, the ideal is "
        f"{' / '.join(f'{s:.1f}' for s in split)} s per partition, so {max(split):.1f} s",
        "Spark's query time includes starting its Python workers (importing pyarrow, duckdb and aiquery) and "
        "the count's final aggregation; the session start is timed apart",
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ai_query rows/s in Spark local mode / in DuckDB.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows (benchmark 1's --quick size)")
    parser.add_argument("--rows", type=int, help=f"rows per run (default {FULL_ROWS:,}, benchmark 1's full size)")
    parser.add_argument("--trials", type=int, default=2, help="runs of each, alternating who goes first (default 2)")
    parser.add_argument("--output", type=Path, help="also write the results as markdown here")
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    machine = dict(report.machine(), pyspark=report._version("pyspark"), java=java[0] if java else "not found")
    command = "python benchmarks/spark.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    start = time.perf_counter()
    section = bench_spark(rows, args.trials)
    total = section.seconds = time.perf_counter() - start
    print("\n" + report.text_table([section]))
    print("\n".join(f"- {note}" for note in section.notes))
    print(f"\ntotal runtime {total:.0f} s")
    if args.output:
        args.output.write_text(report.markdown([section], machine, command, total,
                                               "Spark local mode vs DuckDB: ai_query throughput", "benchmarks/spark.py"))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
