"""How DuckDB runs ai_query: never while planning, once per row, concurrently within limits."""

import pytest

import aiquery
from fakeserver import FakeServer


def test_explain_and_prepare_send_nothing(con, server):
    con.sql("EXPLAIN SELECT ai_query('chat', 'hi')").fetchall()
    con.execute("PREPARE q AS SELECT ai_query('chat', ?)")
    con.sql("DESCRIBE SELECT ai_query('chat', 'hi') AS a").fetchall()
    assert server.requests == []
    assert con.execute("EXECUTE q('hi')").fetchall() == [("echo: hi",)]
    assert len(server.requests) == 1


@pytest.mark.slow
def test_every_row_is_sent_once(con, server):
    con.sql("CREATE TABLE t AS SELECT i, 'prompt ' || i AS p FROM range(3000) r(i)")
    con.sql("CREATE TABLE scored AS SELECT i, ai_query('chat', p) AS a FROM t")
    assert con.sql("SELECT count(*), count(DISTINCT a) FROM scored").fetchall()[0] == (3000, 3000)
    assert con.sql("SELECT count(*) FROM scored WHERE a <> 'echo: prompt ' || i").fetchall()[0] == (0,)
    sent = [b["messages"][0]["content"] for b in server.bodies()]
    assert len(sent) == 3000 and len(set(sent)) == 3000


def test_a_constant_argument_is_not_folded_into_one_call_and_duplicates_share_a_request(con, server):
    result = con.sql("SELECT ai_query('chat', 'same') FROM range(50)").fetchall()
    assert result == [("echo: same",)] * 50
    assert len(server.requests) == 1  # identical requests in flight are sent once


@pytest.mark.slow
def test_requests_run_concurrently_up_to_the_endpoint_limit(endpoints, monkeypatch):
    with FakeServer(api_key="k", latency=0.05) as slow:
        monkeypatch.setenv("FAKE_KEY", "k")
        settings = {"chat": {**endpoints["chat"], "base_url": slow.openai_base, "max_concurrency": 8}}
        with aiquery.connect(endpoints=settings) as con:
            con.sql("SELECT ai_query('chat', 'p' || i) FROM range(200) t(i)").fetchall()
        assert len(slow.requests) == 200
        assert slow.peak_in_flight == 8


def test_reading_several_fields_of_the_answer_does_not_call_the_model_again(con, server):
    con.sql("CREATE TABLE t AS SELECT 'p' || i AS p FROM range(100) r(i)")
    result = con.sql("""SELECT r.response, r.errorMessage, j.label, j.score FROM (
                          SELECT ai_query('chat', p, failOnError => false) AS r,
                                 ai_query('chat', p || '?', responseFormat => 'STRUCT<label: STRING, score: DOUBLE>') AS j
                          FROM t)""").fetchall()
    assert len(result) == 100 and len(server.requests) == 200


def test_limit_sends_only_what_it_keeps(con, server):
    con.sql("CREATE TABLE t AS SELECT 'p' || i AS p FROM range(100) r(i)")
    assert len(con.sql("SELECT ai_query('chat', p) FROM t LIMIT 3").fetchall()) == 3
    assert len(server.requests) == 3


def test_works_when_called_from_inside_a_running_event_loop(con, server):
    import asyncio

    async def notebook_cell():  # Jupyter runs cells while its own event loop is running
        return con.sql("SELECT ai_query('chat', 'p' || i) FROM range(300) t(i)").fetchall()

    result = asyncio.run(notebook_cell())
    assert sorted(r[0] for r in result) == sorted(f"echo: p{i}" for i in range(300))
