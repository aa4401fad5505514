"""Reading ahead of DuckDB: slots stay busy across batches, and nothing is sent that the query does not need."""

import pytest

import aiquery


def _table(con, rows, prompt="'row ' || i"):
    con.sql(f"CREATE TABLE t AS SELECT i AS id, {prompt} AS p FROM range({rows}) r(i)")


def _hold_until_the_second_batch(server, lookahead=8192):
    """A [[hold]] row is answered once a row of DuckDB's second batch (2048 on) has arrived: with
    read-ahead that happens while it is held; batch by batch it cannot, and the hold ends after 1 s."""
    def second_batch(record):
        words = str(record.body).split("row ")
        return len(words) > 1 and words[1].split("'")[0].isdigit() and int(words[1].split("'")[0]) >= 2048
    server.hold_released_by = second_batch
    server.hold_max = 60.0 if lookahead else 1.0


@pytest.mark.slow
@pytest.mark.parametrize("lookahead", [0, 8192])
def test_later_batches_start_while_a_slow_row_of_the_first_is_still_running(endpoints, server, lookahead):
    settings = {"chat": {**endpoints["chat"], "max_concurrency": 64, "lookahead": lookahead}}
    _hold_until_the_second_batch(server, lookahead)
    with aiquery.connect(endpoints=settings) as con:
        _table(con, 4096, "CASE WHEN i = 0 THEN 'slow [[hold]]' ELSE 'row ' || i END")
        result = con.sql("SELECT id, ai_query('chat', p) AS a FROM t ORDER BY id").fetchall()
    assert [a for _, a in result[1:3]] == ["echo: row 1", "echo: row 2"] and len(result) == 4096
    slow = next(r for r in server.requests if "slow" in r.body["messages"][0]["content"])
    prompts = [(r, r.body["messages"][0]["content"]) for r in server.requests]
    later = [r for r, p in prompts if p.startswith("row ") and int(p.split()[1]) >= 2048]
    overlapped = sum(r.arrived < slow.answered for r in later)
    if lookahead:
        assert overlapped > 0  # the second batch ran while the first one's slow row was out
    else:
        assert overlapped == 0    # batch by batch: nothing of the second batch before the first ended
    assert len(server.requests) == 4096


@pytest.mark.slow  # 10,000 rows
def test_every_row_is_sent_once_with_read_ahead(con, server):
    _table(con, 10_000)
    con.sql("CREATE TABLE scored AS SELECT id, ai_query('chat', p) AS a FROM t")
    assert con.sql("SELECT count(*) FROM scored WHERE a = 'echo: row ' || id").fetchall() == [(10_000,)]
    sent = [r.body["messages"][0]["content"] for r in server.requests]
    assert len(sent) == 10_000 and len(set(sent)) == 10_000


def test_only_rows_the_query_keeps_are_sent(con, server):
    _table(con, 5000)
    assert len(con.sql("SELECT ai_query('chat', p) FROM t WHERE id % 10 = 9").fetchall()) == 500
    assert len(server.requests) == 500
    server.reset()
    assert len(con.sql("SELECT ai_query('chat', p) FROM t LIMIT 5").fetchall()) == 5  # ids 0-4: none cached
    assert len(server.requests) == 5


def test_repeats_within_a_query_are_sent_once(con, server):
    _table(con, 5000, "'category ' || (i % 10)")
    result = con.sql("SELECT DISTINCT ai_query('chat', p) FROM t").fetchall()
    assert len(result) == 10 and len(server.requests) == 10


@pytest.mark.slow
def test_a_temp_table_read_through_con_sql_gives_every_row_once(con, server):
    con.sql("CREATE TEMP TABLE t AS SELECT i AS id, 'row ' || i AS p FROM range(3000) r(i)")
    result = con.sql("SELECT id, ai_query('chat', p) FROM t").fetchall()
    assert sorted(result) == [(i, f"echo: row {i}") for i in range(3000)]
    assert len(server.requests) == 3000


@pytest.mark.slow
def test_the_connection_closes_right_after_a_query(endpoints, server):
    for _ in range(5):
        con = aiquery.connect(endpoints=endpoints)
        con.sql("CREATE TABLE t AS SELECT 'x' || i AS p FROM range(3) r(i)")
        con.sql("SELECT ai_query('chat', p) FROM t").fetchall()
        con.close()  # must not find a read-ahead cursor busy


def test_a_failing_query_stops_reading_ahead(endpoints, server):
    settings = {"chat": {**endpoints["chat"], "max_concurrency": 8, "lookahead": 256}}
    with aiquery.connect(endpoints=settings) as con:
        _table(con, 20_000, "CASE WHEN i = 10 THEN 'bad [[status=400]]' ELSE 'row ' || i END")
        with pytest.raises(Exception, match="HTTP 400"):
            con.sql("SELECT ai_query('chat', p) FROM t").fetchall()
        assert len(server.requests) < 2048 + 256 + 8  # a batch, the window and what was in flight
        assert con.sql("SELECT 42").fetchall() == [(42,)]  # the connection is still usable


@pytest.mark.slow  # 4,096 rows from pandas
def test_a_pandas_data_frame_named_in_sql_is_read_ahead(endpoints, server):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"id": range(4096), "p": ["slow [[hold]]"] + [f"row {i}" for i in range(1, 4096)]})
    settings = {"chat": {**endpoints["chat"], "max_concurrency": 64}}
    _hold_until_the_second_batch(server)
    with aiquery.connect(endpoints=settings) as con:
        result = con.sql("SELECT id, ai_query('chat', p) AS a FROM frame").fetchall()
    assert len(result) == 4096 and len(server.requests) == 4096 and frame is not None
    slow = next(r for r in server.requests if "slow" in r.body["messages"][0]["content"])
    second_batch = [r for r in server.requests if r.body["messages"][0]["content"] in {f"row {i}" for i in range(2048, 4096)}]
    assert sum(r.arrived < slow.answered for r in second_batch) > 0


def test_a_data_frame_in_a_local_or_global_variable_is_found_through_execute(con, server):
    # con.execute() is wrapped; DuckDB looks for the DataFrame a statement names in the frame that calls it.
    pandas = pytest.importorskip("pandas")
    local_frame = pandas.DataFrame({"p": [f"row {i}" for i in range(3000)]})
    rows = con.execute("SELECT ai_query('chat', p) FROM local_frame").fetchall()
    assert sorted(rows) == sorted((f"echo: row {i}",) for i in range(3000)) and len(server.requests) == 3000
    assert local_frame is not None  # named only in the SQL above
    assert con.execute("SELECT count(*) FROM GLOBAL_FRAME").fetchall() == [(2,)]
    assert con.execute("SELECT read_ahead FROM aiquery_query_usage() ORDER BY query_id DESC LIMIT 1").fetchall() == [("yes",)]


GLOBAL_FRAME = __import__("pandas").DataFrame({"x": [1, 2]}) if __import__("importlib").util.find_spec("pandas") else None
