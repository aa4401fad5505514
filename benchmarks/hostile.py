"""What a hostile or broken server costs the client: time to the row's error, memory, and whether
the next query works (docs/RELIABILITY.md, section 10).

    python benchmarks/hostile.py                                   # this checkout
    python benchmarks/hostile.py --compare /tmp/before             # and another checkout, e.g. an older commit
                                                                   # (git worktree add --detach /tmp/before 612bef9)
    python benchmarks/hostile.py --only body-500mib gzip-bomb      # some cases

Each case runs in a fresh client process (PYTHONPATH set to the checkout) against the servers of
tests/hostile.py in this process: one query that meets the fault (failOnError => false), then a
normal query on the same engine. Memory is the peak RSS growth over the process's RSS before the
query (VmHWM - VmRSS), for the parent and for the HTTP child process. A query still running after
--limit seconds is reported as hung.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from hostile import bad_rows, chat_body, compressed, deep_json, gzip_bomb, http, json_response  # noqa: E402

KEY = "sk-canary-7f3a9c1e5b"

CLIENT = r'''
import json, os, sys, threading, time
import aiquery

def vm(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0

base_url, limit = sys.argv[1], float(sys.argv[2])
engine = aiquery.Engine()
con = aiquery.connect(endpoints={"chat": {"base_url": base_url, "model": "m", "api_key_env": "HOSTILE_KEY",
                                          "max_attempts": 2, "timeout": 10, "max_retry_time": 5}},
                      engine=engine, cache=False)
con.sql("SELECT ai_query('chat', 'warm up')").fetchall()
child = getattr(engine._mounts["http://"], "_process", None)
pids = {"parent": os.getpid(), "child": child.pid if child else None}
before = {k: vm(p, "VmRSS") for k, p in pids.items() if p}
result = {}

def run(sql, key):
    started = time.monotonic()
    box = []
    def target():
        try:
            box.append(con.sql(sql).fetchall()[0][0])
        except Exception as exc:
            box.append(f"raised: {exc}")
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    result[key + "_seconds"] = round(time.monotonic() - started, 2)
    result[key] = box[0] if box else None

run("SELECT ai_query('chat', 'bad', failOnError => false).errorMessage", "error")
result["hung"] = result["error"] is None and result["error_seconds"] >= limit
for k, p in pids.items():
    if p and os.path.exists(f"/proc/{p}/status"):
        result[k + "_growth_mb"] = round((vm(p, "VmHWM") - before[k]) / 1e6, 1)
if not result["hung"]:
    run("SELECT ai_query('chat', 'fine')", "next")
print(json.dumps(result), flush=True)
os._exit(0)
'''


def _endless(request, writer):
    async def go():
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b" " * (1 << 16)
        frame = b"%x\r\n%s\r\n" % (len(block), block)
        try:
            for _ in range(500 << 4):  # 500 MiB
                writer.write(frame)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        except ConnectionError:
            pass
    return go()


async def _echo(request, writer):
    writer.write(json_response(401, {"error": {"message": f"bad key {request.headers.get('authorization')}"}}))


prefix, suffix = chat_body("CONTENT").split(b"CONTENT")
CASES = {
    "header-0xff": http(307, headers=[("Location", b"http://127.0.0.1:9/\xff\xfe")]),
    "retry-after-0xff": http(429, b"{}", [("Retry-After", b"\xff")]),
    "error-nested-2000": http(500, deep_json(2000)),
    "error-message-5mb": json_response(400, {"error": {"message": "x" * (5 << 20)}}),
    "body-500mib": _endless,
    "gzip-bomb": http(200, gzip_bomb(512 << 20), [("Content-Encoding", "gzip")]),
    "gzip-answer-300mib": http(200, compressed(prefix, b"a" * (1 << 20), 300, suffix), [("Content-Encoding", "gzip")]),
    "echoed-key": _echo,
    "escapes": json_response(400, {"error": {"message": "x\x1b]0;pwned\x07\x1b[2Jy"}}),
}


def measure(tree: Path, fault, limit: float) -> dict:
    with bad_rows(fault) as server:
        out = subprocess.run([sys.executable, "-c", CLIENT, server.openai_base, str(limit)], capture_output=True,
                             text=True, timeout=limit * 3 + 60, cwd="/tmp",
                             env={**os.environ, "PYTHONPATH": str(tree), "HOSTILE_KEY": KEY,
                                  "AIQUERY_CACHE_DIR": "/tmp/aiquery-hostile-bench-cache"})
        requests = sum(r.prompt.startswith("bad") for r in server.requests)
    lines = out.stdout.strip().splitlines()
    if not lines:
        return {"failed": out.stderr[-500:]}
    result = json.loads(lines[-1])
    result["requests"] = requests
    return result


def describe(r: dict) -> str:
    if "failed" in r:
        return f"client failed: {r['failed']}"
    if r["hung"]:
        return f"**hung** (no result after {r['error_seconds']:g} s)"
    error = r["error"] or ""
    shown = error if len(error) <= 140 else error[:100] + f"... [{len(error):,} chars]"
    shown = shown.replace(KEY, "**KEY**").encode("unicode_escape").decode().replace("|", "\\|")
    growth = ", ".join(f"{k.split('_')[0]} +{r[k]:g} MB" for k in ("parent_growth_mb", "child_growth_mb") if k in r)
    nxt = "next query ok" if r.get("next") == "echo: fine" else f"next query: {r.get('next')!r}"
    leaked = "; **the key is in the message**" if KEY in error else ""
    controls = "; **terminal controls in the message**" if any(c in error for c in "\x1b\x07\x9b") else ""
    return f"{r['error_seconds']:g} s, {r['requests']} request(s), {growth}; {nxt}{leaked}{controls}; `{shown}`"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", type=Path, help="another checkout to measure the same way")
    parser.add_argument("--only", nargs="*", choices=list(CASES))
    parser.add_argument("--limit", type=float, default=30.0, help="seconds before a query counts as hung")
    args = parser.parse_args()
    trees = {"this checkout": HERE.parent}
    if args.compare:
        trees = {str(args.compare): args.compare, **trees}
    print("| case | " + " | ".join(trees) + " |")
    print("|---|" + "---|" * len(trees))
    for name in args.only or CASES:
        cells = [describe(measure(tree, CASES[name], args.limit)) for tree in trees.values()]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
