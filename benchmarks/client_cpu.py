"""Client CPU time of two checkouts on benchmark 2's workload, alternately: a steadier figure than
wall time on a shared machine (docs/RELIABILITY.md, "Client throughput, unchanged").

    git worktree add --detach /tmp/before main
    python benchmarks/client_cpu.py /tmp/before [--rounds 6]

Each run is a fresh process with PYTHONPATH set to its checkout: 20,000 rows through `ai_query` in a
CREATE TABLE AS against a private nginx answering at once, 256 in flight. It reports the medians of
the wall time, the parent's CPU time (all its threads) and the HTTP child's CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import servers

HERE = Path(__file__).resolve().parent
ROWS = 20_000

CLIENT = r'''
import json, resource, sys, time, aiquery
con = aiquery.connect(endpoints={"ai": {"base_url": sys.argv[1], "model": "m", "max_concurrency": 256}}, cache=False)
con.execute(f"CREATE TABLE prompts AS SELECT range AS id, 'row ' || range AS prompt FROM range({sys.argv[2]})")
wall, cpu = time.perf_counter(), time.process_time()
con.execute("CREATE TABLE scored AS SELECT id, ai_query('ai', prompt) AS answer FROM prompts")
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
ok = con.execute("SELECT count(*) FILTER (WHERE answer = 'ok') FROM scored").fetchone()[0]
con.close()
aiquery.Engine.shared().close()  # the child exits and is reaped: its CPU time is in RUSAGE_CHILDREN
child = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "cpu": cpu, "child_cpu": child.ru_utime + child.ru_stime, "ok": ok}))
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline", type=Path, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    trees = {str(args.baseline): args.baseline, "this checkout": HERE.parent}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    with servers.Nginx() as nginx:
        for i in range(args.rounds):
            order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                out = subprocess.run([sys.executable, "-c", CLIENT, nginx.openai_base, str(ROWS)], capture_output=True,
                                     text=True, cwd="/tmp", env={**os.environ, "PYTHONPATH": str(tree)}, timeout=600)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                if result["ok"] != ROWS:
                    raise SystemExit(f"{name}: {result['ok']} of {ROWS} rows answered right")
                results[name].append(result)
    print("| checkout | wall | parent CPU | HTTP child CPU |\n|---|---:|---:|---:|")
    for name, runs in results.items():
        wall, cpu, child = (statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "child_cpu"))
        print(f"| {name} | {wall:.2f} s | {cpu:.2f} s | {child:.2f} s |")


if __name__ == "__main__":
    main()
