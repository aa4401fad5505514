"""When a query ends, for any reason, nothing more is sent for it: counted by the engine and at the server.

A query reads ahead of DuckDB (aiquery/_prefetch.py): up to `lookahead` rows are in flight or
answered before DuckDB asks for them. When the query ends early (an interrupt, an error here or
in DuckDB, a reader closed after its first batch, its connection closed) those rows are not
needed, and none of them may be sent afterwards. An interrupt that landed between two batches
used to leave read-ahead sending for 2 s; 3 to 5 interrupts in 20 sent 1,800 to 2,765 requests more.

Each test counts the query's requests when the statement returns, waits until the engine has
nothing in flight, queued or waiting to be retried (Engine.pending(), a deterministic wait), and
checks that the count did not grow and that the server received no more than it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

import aiquery
from fakeserver import FakeServer
from waiting import settle, wait_for

ROOT = Path(__file__).resolve().parent.parent

ROWS = 5000
CONCURRENCY = 64


@pytest.fixture
def slow_server():
    # Latency makes a query take long enough (5,000 rows x 0.05 s / 64 = 4 s) to end it midway.
    with FakeServer(latency=0.05) as s:
        yield s


@pytest.fixture
def setup(slow_server):
    engine = aiquery.Engine()
    endpoints = {"chat": {"base_url": slow_server.openai_base, "model": "m", "max_concurrency": CONCURRENCY,
                          "cache": False}}
    con = aiquery.connect(endpoints=endpoints, engine=engine, cache=False)
    con.execute(f"CREATE TABLE t AS SELECT i FROM range({ROWS}) r(i)")
    yield con, engine, slow_server
    con.close()
    engine.close()


def sent(engine: aiquery.Engine) -> int:
    return sum(usage.requests for usage in engine.stats().values())


def assert_nothing_sent_after(engine, server, at_end: int) -> None:
    settle(engine)
    assert sent(engine) == at_end, f"{sent(engine) - at_end} requests sent after the query ended"
    assert len(server.requests) <= at_end


@pytest.mark.slow  # 20 interrupted queries
def test_an_interrupt_at_any_moment_stops_every_request_of_the_query(setup):
    """DuckDB also runs a Python function of the user's in the query, for 0.3 s a batch, so that
    many interrupts land between two ai_query batches: DuckDB then ends the query on its own."""
    con, engine, server = setup
    con.create_function("user_step", lambda i: time.sleep(0.3) or i, [duckdb.sqltypes.BIGINT], duckdb.sqltypes.BIGINT,
                        type="arrow", side_effects=True)
    rng = random.Random(7)
    for trial in range(20):
        before = sent(engine)
        timer = threading.Timer(rng.uniform(0.05, 1.5), con.interrupt)
        timer.start()
        with pytest.raises(duckdb.Error, match="(?i)interrupt"):
            con.execute(f"CREATE OR REPLACE TABLE s AS SELECT ai_query('chat', 'trial {trial} row ' || i), "
                        "user_step(i) FROM t")
        at_end = sent(engine)
        timer.join()
        assert at_end - before < ROWS, f"trial {trial}: the interrupt came after the end"
        settle(engine)
        assert sent(engine) == at_end, f"trial {trial}: {sent(engine) - at_end} requests sent after the interrupt"
    assert len(server.requests) <= sent(engine)


@pytest.mark.slow
def test_an_interrupt_before_the_first_batch_reaches_aiquery_sends_nothing(setup):
    """DuckDB evaluates the user's function, then ai_query, on the same chunk with no interrupt check
    in between: an interrupt during the user's function used to let that whole first batch (2,048
    rows) and its read-ahead be sent after the interrupt."""
    con, engine, server = setup
    con.create_function("user_step", lambda i: time.sleep(0.5) or i, [duckdb.sqltypes.BIGINT],
                        duckdb.sqltypes.BIGINT, type="arrow", side_effects=True)
    timer = threading.Timer(0.15, con.interrupt)
    timer.start()
    with pytest.raises(duckdb.Error, match="(?i)interrupt"):
        con.execute("CREATE TABLE s AS SELECT user_step(i) AS u, ai_query('chat', 'row ' || i) AS a FROM t")
    timer.join()
    settle(engine)
    assert sent(engine) == len(server.requests) == 0
    assert len(con.execute("SELECT ai_query('chat', 'next') FROM t LIMIT 3").fetchall()) == 3  # the next query runs


@pytest.mark.slow
def test_a_cursor_interrupt_stops_the_cursor_query_and_not_its_connection(setup):
    con, engine, server = setup
    cursor = con.cursor()
    results: dict[str, object] = {}

    def on_connection():
        results["connection"] = con.execute(
            "SELECT count(a) FROM (SELECT ai_query('chat', 'conn ' || i) AS a FROM t WHERE i < 1000)").fetchall()

    def cursor_rows() -> int:
        return sum("cursor " in r.body["messages"][-1]["content"] for r in server.requests)

    def interrupt_once_it_sends():
        deadline = time.monotonic() + 60
        while not cursor_rows() and time.monotonic() < deadline:
            time.sleep(0.01)
        cursor.interrupt()

    thread = threading.Thread(target=on_connection)
    thread.start()
    interrupter = threading.Thread(target=interrupt_once_it_sends)
    interrupter.start()
    with pytest.raises(duckdb.Error, match="(?i)interrupt"):
        cursor.execute("CREATE TABLE c AS SELECT ai_query('chat', 'cursor ' || i) FROM t")
    interrupter.join()
    thread.join()
    assert results["connection"] == [(1000,)]
    assert 0 < cursor_rows() < ROWS


@pytest.mark.slow
def test_an_error_raised_by_duckdb_stops_what_was_read_ahead(setup):
    """DuckDB fails the query on row 3,000 (not an ai_query error: aiquery is not told). The rows
    read ahead past it are not sent once DuckDB has ended the query; the ones already on their
    way then are at most one round of the endpoint's limit."""
    con, engine, server = setup
    with pytest.raises(duckdb.Error, match="Division by zero"):
        con.execute("CREATE TABLE s AS SELECT ai_query('chat', 'row ' || i) AS a, 1 // (i - 3000) AS boom FROM t")
    at_end = sent(engine)
    settle(engine)
    assert sent(engine) - at_end <= CONCURRENCY
    assert sent(engine) < ROWS


@pytest.mark.slow
def test_a_reader_closed_after_its_first_batch_stops_the_query(setup):
    con, engine, server = setup
    rows = 50_000
    con.execute(f"CREATE TABLE big AS SELECT i FROM range({rows}) r(i)")
    con.execute("SET streaming_buffer_size = '1KB'")  # DuckDB itself then computes 2 chunks ahead of the reader
    reader = con.sql("SELECT ai_query('chat', 'streamed ' || i) AS a FROM big").to_arrow_reader(100)
    first = reader.read_next_batch()
    assert first.num_rows == 100
    reader.close()
    at_end = sent(engine)
    settle(engine)
    assert sent(engine) - at_end <= CONCURRENCY
    assert sent(engine) < rows / 2
    assert con.execute("SELECT 42").fetchall() == [(42,)]


def test_a_limit_sends_only_the_rows_it_returns(setup):
    con, engine, server = setup
    assert len(con.execute("SELECT ai_query('chat', 'limited ' || i) FROM t LIMIT 10").fetchall()) == 10
    settle(engine)
    assert sent(engine) == len(server.requests) == 10


@pytest.mark.slow
def test_a_failing_row_stops_the_other_batches_of_its_query(setup):
    """failOnError => true: the first failed row fails the query; the batches DuckDB runs at the
    same moment on its other threads stop too, instead of sending the rest of their rows."""
    con, engine, server = setup
    con.execute("SET threads = 4")
    con.execute("CREATE TABLE big AS SELECT i FROM range(200000) r(i)")  # scanned by several threads
    with pytest.raises(duckdb.Error, match="HTTP 400"):
        con.execute("CREATE TABLE s AS SELECT ai_query('chat', 'row ' || i || CASE WHEN i = 5 THEN "
                    "'[[status=400]]' ELSE '' END) FROM big")
    at_end = sent(engine)
    settle(engine)
    assert sent(engine) == at_end
    assert at_end < 4 * 2048 + CONCURRENCY


# Ctrl-C: Python runs a signal handler on the main thread between two bytecodes. When DuckDB runs
# every ai_query batch on its other threads (it did under load: the main thread waits in C++ for
# them), the handler ran only after the query had sent everything. The main thread's wait is
# played here by a C mutex the query's thread holds: like DuckDB's wait, it runs no Python code.
CTRL_C_SCRIPT = """
import ctypes, signal, socket, sys, threading
import aiquery
con = aiquery.connect(endpoints={"chat": {"base_url": sys.argv[1], "model": "m", "max_concurrency": 32}}, cache=False)
libc = ctypes.CDLL(None)
mutex = ctypes.create_string_buffer(64)  # all zero bytes: PTHREAD_MUTEX_INITIALIZER
outcome, locked = [], threading.Event()

def query():
    libc.pthread_mutex_lock(mutex)
    locked.set()
    try:
        rows = con.cursor().execute("SELECT count(a) FROM (SELECT ai_query('chat', 'row ' || i) AS a FROM range(320) t(i))").fetchall()
        outcome.append(f"finished {rows}")
    except Exception as exc:
        outcome.append(f"failed: {exc}")
    finally:
        libc.pthread_mutex_unlock(mutex)

thread = threading.Thread(target=query)
thread.start()
locked.wait()
print("started", flush=True)
try:
    libc.pthread_mutex_lock(mutex)  # released when the query is over
    libc.pthread_mutex_unlock(mutex)
    print("no KeyboardInterrupt", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
thread.join()
print(*outcome, flush=True)
"""


def _start(script: str, server: FakeServer) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, server.openai_base], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "started", proc.communicate(timeout=60)
    return proc


def test_ctrl_c_cancels_the_query_while_the_main_thread_waits_in_c():
    with FakeServer(latency=1.0) as server:  # 320 rows, 32 at a time: 10 s if nothing stops it
        proc = _start(CTRL_C_SCRIPT, server)
        wait_for(lambda: len(server.requests) >= 32, what="the first round sent")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        caught, outcome = out.splitlines()[-2:]
        assert caught == "KeyboardInterrupt" and outcome.startswith("failed:") and "query interrupted" in outcome, out
        assert len(server.requests) < 320  # the rest was never sent


FORK_SCRIPT = """
import os, signal, sys, threading
import aiquery
con = aiquery.connect(endpoints={"chat": {"base_url": sys.argv[1], "model": "m", "max_concurrency": 32}}, cache=False)
child = os.fork()
if child == 0:  # a forked worker (multiprocessing, a pre-forking server) that is then sent Ctrl-C
    try:
        signal.pause()
    finally:
        os._exit(3)

def interrupt_child():
    sys.stdin.readline()  # the test has seen the parent's query send its first round
    os.kill(child, signal.SIGINT)
    os.waitpid(child, 0)
    print("child interrupted", flush=True)

threading.Thread(target=interrupt_child).start()
print("started", flush=True)
print(con.execute("SELECT count(a) FROM (SELECT ai_query('chat', 'row ' || i) AS a FROM range(320) t(i))").fetchall(), flush=True)
"""


@pytest.mark.slow  # a subprocess that forks
def test_ctrl_c_in_a_forked_child_leaves_the_parents_queries_alone():
    with FakeServer(latency=0.5) as server:  # 320 rows, 32 at a time: 5 s
        proc = subprocess.Popen([sys.executable, "-c", FORK_SCRIPT, server.openai_base], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout.readline().strip() == "started"
        wait_for(lambda: len(server.requests) >= 32, what="the parent's first round sent")
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.splitlines() == ["child interrupted", "[(320,)]"], (out, err)


THEIR_WAKEUP_SCRIPT = """
import signal, socket, sys, threading
receiver, sender = socket.socketpair()
sender.setblocking(False)
signal.set_wakeup_fd(sender.fileno())  # an asyncio loop with signal handlers does this
import aiquery
con = aiquery.connect(endpoints={"chat": {"base_url": sys.argv[1], "model": "m"}}, cache=False)
con.cursor()
print(signal.set_wakeup_fd(-1) == sender.fileno(), [t.name for t in threading.enumerate() if t.name == "aiquery-sigint"])
"""


@pytest.mark.slow  # a subprocess
def test_a_wakeup_fd_set_by_someone_else_stays_theirs():
    with FakeServer() as server:
        out = subprocess.run([sys.executable, "-c", THEIR_WAKEUP_SCRIPT, server.openai_base], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.stdout.strip() == "True []", out
