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

import random
import threading
import time

import duckdb
import pytest

import aiquery
from fakeserver import FakeServer
from waiting import settle

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
