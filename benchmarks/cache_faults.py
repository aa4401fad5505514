"""The response cache when its file is not what it should be: what a user sees, measured.

Standalone (not part of run.py); the figures are in docs/RELIABILITY.md ("Response cache"). Each
scenario runs a client process against tests/fakeserver.py's server on 127.0.0.1 with a cache
directory of its own, and reports rows answered, requests the server got, what stderr said, rows in
the file afterwards, and times. `--code` runs the clients on another checkout of aiquery, so the
same command measures the code before a change:

    python benchmarks/cache_faults.py                                     # this checkout: ~1 minute
    git worktree add /tmp/before <commit> && python benchmarks/cache_faults.py --code /tmp/before

Scenarios:
- lock held: another process holds the write lock (BEGIN IMMEDIATE) while a client answers 50 rows
  and exits; the time from its last output to its exit (median of 3), and what it said.
- lock released: the same, but the lock is let go 1 s after the client's rows are answered while it
  still runs (it exits 3 s after them); the rows in the file afterwards.
- damaged: 3 pages of garbage in the middle of a 400-answer file, then the query again,
  `aiquery cache clear --endpoint chat`, `aiquery cache repair`, and the query once more.
- umask 000: the modes of a new cache directory and its files.
- routing header: two endpoints that differ only in a header ask the same prompt.
- read-only directory (root: a read-only bind mount in a mount namespace) and full disk (RLIMIT_FSIZE
  at 40 kB): 200 rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fakeserver import FakeServer  # noqa: E402

CLIENT = textwrap.dedent("""
    import json, os, resource, signal, sys, time, warnings
    import aiquery
    limit = int(os.environ.get("FILE_SIZE_LIMIT") or 0)
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    os.umask(int(os.environ.get("UMASK") or "22", 8))
    endpoints = json.loads(sys.argv[1])
    result = {}
    try:
        con = aiquery.connect(endpoints=endpoints)
        result["rows"] = con.execute(sys.argv[2]).fetchall()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result, default=str), flush=True)
    time.sleep(float(sys.argv[3]))
""")
QUERY = "SELECT i, ai_query('chat', 'row ' || i) FROM range({rows}) t(i) ORDER BY i"
FIRST = "SELECT ai_query('chat', 'first')"  # creates the file, as the version under test writes it
HOLD_LOCK = ("import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "db.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.readline()\ndb.execute('COMMIT')")
READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


class Client:
    def __init__(self, code: Path, server: FakeServer):
        self.code, self.server = code, server

    def endpoints(self, **chat) -> dict:
        return {"chat": {"base_url": self.server.openai_base, "model": "m", **chat}}

    def run(self, cache: Path, sql: str, endpoints: dict | None = None, linger: float = 0.0,
            wrapper: tuple[str, ...] = (), **env: str) -> dict:
        """One client process; its result, stderr, requests the server got and seconds from output to exit."""
        self.server.reset()
        proc = subprocess.Popen([*wrapper, sys.executable, "-c", CLIENT, json.dumps(endpoints or self.endpoints()),
                                 sql, str(linger)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.code, env={**os.environ, "PYTHONPATH": str(self.code),
                                                    "AIQUERY_CACHE_DIR": str(cache), **env})
        line = proc.stdout.readline()
        printed = time.monotonic()
        _, err = proc.communicate(timeout=300)
        result = json.loads(line) if line else {"error": err.strip().splitlines()[-1] if err.strip() else "?"}
        result.update(stderr=err, requests=len(self.server.requests), exit_s=time.monotonic() - printed - linger)
        return result

    def cli(self, cache: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "import sys; from aiquery._cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *args], capture_output=True, text=True, cwd=self.code,
                              env={**os.environ, "PYTHONPATH": str(self.code), "AIQUERY_CACHE_DIR": str(cache)})


def stored(cache: Path) -> int | str:
    try:
        with contextlib.closing(sqlite3.connect(cache / "responses.sqlite3")) as db:
            return db.execute("SELECT count(*) FROM responses").fetchone()[0]
    except sqlite3.Error as exc:
        return f"unreadable ({exc})"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def said(stderr: str) -> str:
    """The client's warnings and errors, one line each, without tracebacks."""
    lines = [line.strip() for line in stderr.splitlines() if "Warning:" in line or "Error:" in line]
    lines = [line[line.index("CacheWarning:"):] if "CacheWarning:" in line else line for line in lines]
    return " / ".join(dict.fromkeys(lines)) or "nothing"


def answered(result: dict, rows: int) -> str:
    if "error" in result:
        return f"query failed: {result['error'][:140]}"
    right = sum(str(a).endswith(f"row {i}") for i, a in result["rows"])
    return f"{right}/{rows} rows right"


@contextlib.contextmanager
def write_lock(cache: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cache / "responses.sqlite3")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    try:
        yield holder
    finally:
        if holder.poll() is None:
            holder.stdin.write("\n")
            holder.stdin.close()
            holder.wait(timeout=30)


def scenarios(client: Client, work: Path) -> list[tuple[str, str]]:
    figures = []

    def fresh(name: str) -> Path:
        path = work / name
        path.mkdir()
        return path

    # lock held throughout
    exits, last = [], None
    for attempt in range(3):
        cache = fresh(f"lock-held-{attempt}")
        client.run(cache, FIRST)
        with write_lock(cache):
            last = client.run(cache, QUERY.format(rows=50))
            exits.append(last["exit_s"])
        stored_after = stored(cache) - 1
    figures.append(("lock held: exit after the last output (median of 3)",
                    f"{statistics.median(exits):.1f} s ({', '.join(f'{s:.1f}' for s in exits)}); "
                    f"{answered(last, 50)}; rows stored: {stored_after}; stderr: {said(last['stderr'])}"))

    # lock released 1 s after the rows, while the client still runs
    cache = fresh("lock-released")
    client.run(cache, FIRST)
    with write_lock(cache) as holder:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(client.endpoints()),
                                 QUERY.format(rows=50), "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=client.code, env={**os.environ, "PYTHONPATH": str(client.code),
                                                "AIQUERY_CACHE_DIR": str(cache)})
        proc.stdout.readline()
        time.sleep(1)
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
        _, err = proc.communicate(timeout=60)
    figures.append(("lock released 1 s after the rows: rows stored", f"{stored(cache) - 1}/50; stderr: {said(err)}"))

    # damaged pages
    cache = fresh("damaged")
    client.run(cache, QUERY.format(rows=400))
    path = cache / "responses.sqlite3"
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(3 * 4096))
    again = client.run(cache, QUERY.format(rows=400))
    figures.append(("damaged file: the query again", f"{answered(again, 400)}; requests: {again['requests']}; "
                                                      f"stderr: {said(again['stderr'])}"))
    cleared = client.cli(cache, "cache", "clear", "--endpoint", "chat")
    figures.append(("damaged file: `aiquery cache clear --endpoint chat`",
                    f"exit {cleared.returncode}: {last_line(cleared.stdout + cleared.stderr)[:300]}"))
    repaired = client.cli(cache, "cache", "repair")
    after = client.run(cache, QUERY.format(rows=400))
    figures.append(("damaged file: `aiquery cache repair`, then the query",
                    f"exit {repaired.returncode}: {last_line(repaired.stdout + repaired.stderr)[:300]}; "
                    f"then {answered(after, 400)} with {after['requests']} requests"))

    # permissions
    cache = work / "umask-000" / "aiquery"
    client.run(cache, QUERY.format(rows=5), UMASK="000")
    modes = [f"{p.relative_to(work)} {oct(p.stat().st_mode & 0o777)}" for p in (cache.parent, cache, cache / "responses.sqlite3")]
    figures.append(("umask 000: modes of what it created", ", ".join(modes)))

    # routing header
    cache = fresh("headers")
    endpoints = {"eu": {**client.endpoints()["chat"], "headers": {"x-route": "eu"}},
                 "us": {**client.endpoints()["chat"], "headers": {"x-route": "us"}}}
    routed = client.run(cache, "SELECT ai_query('eu', 'hi'), ai_query('us', 'hi')", endpoints)
    routes = sorted(r.headers.get("x-route", "") for r in client.server.requests)
    figures.append(("two endpoints differing only in a routing header, one prompt",
                    f"{routed['requests']} requests (routes {routes}); {routed.get('error') or 'answered'}"))

    # read-only directory, full disk
    cache = fresh("read-only")
    os.chmod(cache, 0o555)
    wrapper: tuple[str, ...] = ()
    if os.geteuid() == 0:
        wrapper = ("unshare", "--mount", "sh", "-c", READ_ONLY_MOUNT, str(cache))
    ro = client.run(cache, QUERY.format(rows=200), wrapper=wrapper)
    figures.append(("read-only cache directory, 200 rows", f"{answered(ro, 200)}; stderr: {said(ro['stderr'])}"))
    os.chmod(cache, 0o755)
    cache = fresh("full-disk")
    client.run(cache, FIRST)
    full = client.run(cache, QUERY.format(rows=600), FILE_SIZE_LIMIT="40000")
    figures.append(("full disk (writes past 40 kB fail), 600 rows",
                    f"{answered(full, 600)}; rows stored: {stored(cache) - 1}; stderr: {said(full['stderr'])}"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the aiquery checkout the clients run (default: this one)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with FakeServer() as server, tempfile.TemporaryDirectory() as work:
        figures = scenarios(Client(args.code.resolve(), server), Path(work))
    print(f"aiquery at {args.code} ({commit or '?'})\n\n| scenario | measured |\n|---|---|")
    for name, value in figures:
        print(f"| {name} | {' '.join(value.replace('|', '/').split())} |")


if __name__ == "__main__":
    main()
