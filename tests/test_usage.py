"""Usage, cost, budgets and per-row details, checked against what the fake server answered."""

from __future__ import annotations

import duckdb
import pytest

import aiquery

USAGE = "SELECT * FROM aiquery_usage() WHERE endpoint = 'chat'"


def usage_row(con, sql=USAGE) -> dict:
    rel = con.sql(sql)
    rows = rel.fetchall()
    assert len(rows) == 1, rows
    return dict(zip(rel.columns, rows[0]))


@pytest.fixture
def engine():
    engine = aiquery.Engine()  # figures of this test only
    yield engine
    engine.close()


@pytest.mark.slow
def test_usage_matches_what_the_server_answered(endpoints, server, engine):
    with aiquery.connect(endpoints=endpoints, engine=engine) as con:
        con.sql("SELECT ai_query('chat', 'row ' || i || ' [[tokens=' || (10 + i) || ',' || i || ']]') "
                "FROM range(20) t(i)").fetchall()
        con.sql("SELECT ai_query('chat', 'throttled [[status=429 times=1 retry_after_ms=1]] [[tokens=5,5]]')").fetchall()
        con.sql("SELECT ai_query('chat', 'refused [[status=400]]', failOnError => false)").fetchall()
        con.sql("SELECT ai_query('chat', 'row ' || i || ' [[tokens=' || (10 + i) || ',' || i || ']]') "
                "FROM range(5) t(i)").fetchall()  # all five from the cache
        row = usage_row(con)
    answered = [r for r in server.requests if r.status == 200]
    assert row["requests"] == len(server.requests) == 23
    assert row["prompt_tokens"] == sum(10 + i for i in range(20)) + 5
    assert row["completion_tokens"] == sum(range(20)) + 5
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    assert (row["answered"], row["cache_hits"], row["retries"], row["throttled"]) == (len(answered), 5, 1, 1)
    assert row["errors"] == 1 and row["error_kinds"] == {"http_400": 1}
    assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"]
    assert row["model"] == "fake-chat" and row["cost_usd"] is None  # no price known for fake-chat


def test_cost_uses_the_config_price_table(endpoints, server, engine, tmp_path):
    config = tmp_path / "aiquery.toml"
    config.write_text('[prices."fake-chat"]\ninput = 2.0\noutput = 8.0\n')
    with aiquery.connect(endpoints=endpoints, config=config, engine=engine) as con:
        con.sql("SELECT ai_query('chat', 'row ' || i || ' [[tokens=1000,250]]') FROM range(4) t(i)").fetchall()
        row = usage_row(con)
    assert row["cost_usd"] == pytest.approx((4000 * 2.0 + 1000 * 8.0) / 1e6)


def test_a_builtin_price_and_a_bad_price_table(endpoints, server, engine, tmp_path):
    priced = {**endpoints, "chat": {**endpoints["chat"], "model": "gpt-4o-mini"}}
    with aiquery.connect(endpoints=priced, engine=engine) as con:
        con.sql("SELECT ai_query('chat', 'x [[tokens=1000000,1000000]]')").fetchall()
        assert usage_row(con)["cost_usd"] == pytest.approx(0.15 + 0.60)
    config = tmp_path / "bad.toml"
    config.write_text('[prices."m"]\ninput = "cheap"\n')
    with pytest.raises(aiquery.ConfigError, match=r"\[prices.'m'\] takes input =, output =, cached_input ="):
        aiquery.connect(endpoints=endpoints, config=config)


def test_usage_per_query(endpoints, server, engine):
    with aiquery.connect(endpoints=endpoints, engine=engine) as con:
        con.sql("SELECT ai_query('chat', 'a ' || i || ' [[tokens=10,1]]') FROM range(3) t(i)").fetchall()
        con.sql("SELECT ai_query('chat', 'b ' || i || ' [[tokens=20,2]]'), ai_query('embed', 'e ' || i) "
                "FROM range(4) t(i)").fetchall()
        rows = con.sql("SELECT query_id, statement, endpoint, requests, prompt_tokens, completion_tokens "
                       "FROM aiquery_query_usage()").fetchall()
    (q1, s1, e1, r1, p1, c1), (q2, s2, e2, r2, p2, c2), (q3, s3, e3, r3, p3, c3) = rows
    assert q1 < q2 == q3 and "'a '" in s1 and "'b '" in s2 == s3
    assert (e1, r1, p1, c1) == ("chat", 3, 30, 3)
    assert (e2, r2, p2, c2) == ("chat", 4, 80, 8)
    assert (e3, r3) == ("embed", 1)


@pytest.mark.slow
def test_a_query_token_budget_stops_dispatch_and_keeps_completed_rows(endpoints, server, engine):
    budgeted = {**endpoints, "chat": {**endpoints["chat"], "max_concurrency": 1, "query_budget_tokens": 500}}
    query = ("SELECT i, ai_query('chat', 'row ' || i || ' [[tokens=90,10]]', failOnError => false) AS r "
             "FROM range(12) t(i) ORDER BY i")
    with aiquery.connect(endpoints=budgeted, engine=engine) as con:
        rows = con.sql(query).fetchall()
        answered = [i for i, r in rows if r["response"] is not None]
        refused = [r["errorMessage"] for i, r in rows if r["response"] is None]
        assert answered == [0, 1, 2, 3, 4] and len(server.requests) == 5  # 5 x 100 tokens reach the budget
        assert refused and all(e.startswith("budget exceeded: endpoint 'chat' used 500 tokens for this query, "
                                            "its query_budget_tokens is 500") for e in refused)
        with pytest.raises(duckdb.Error, match="budget exceeded"):
            con.sql(query.replace(", failOnError => false", "").replace("row ", "other ")).fetchall()
    more = {**endpoints, "chat": {**endpoints["chat"], "query_budget_tokens": 5000}}
    server.reset()
    with aiquery.connect(endpoints=more, engine=engine) as con:
        rows = con.sql(query).fetchall()
    assert all(r["response"] for _, r in rows)
    assert len(server.requests) == 7  # the five answered before came from the cache


def test_an_endpoint_usd_budget(endpoints, server, engine, tmp_path):
    unpriced = {**endpoints, "chat": {**endpoints["chat"], "budget_usd": 0.01}}
    with pytest.raises(aiquery.ConfigError, match="endpoint 'chat': a USD budget needs the price of model 'fake-chat'"):
        aiquery.connect(endpoints=unpriced, engine=engine)
    config = tmp_path / "aiquery.toml"
    config.write_text('[prices."fake-chat"]\ninput = 10.0\noutput = 0.0\n')  # $10 per million: 1,000 tokens = $0.01
    limited = {**unpriced, "chat": {**unpriced["chat"], "max_concurrency": 1}}
    with aiquery.connect(endpoints=limited, config=config, engine=engine) as con:
        con.sql("SELECT ai_query('chat', 'a ' || i || ' [[tokens=400,0]]', failOnError => false) FROM range(3) t(i)").fetchall()
        (errors,), = con.sql("SELECT list(r.errorMessage) FROM (SELECT ai_query('chat', 'b ' || i || "
                             "' [[tokens=400,0]]', failOnError => false) AS r FROM range(3) t(i))").fetchall()
    assert len(server.requests) == 3  # $0.004 each: the budget of $0.01 is reached after the third
    assert all(e.startswith("budget exceeded: endpoint 'chat' spent $0.0120 for the endpoint, its budget_usd is "
                            "$0.0100") for e in errors)


@pytest.mark.slow
def test_details_carry_usage_finish_reason_attempts_and_cache(con, server):
    query = ("SELECT p, ai_query('chat', p, failOnError => false, details => true) AS r FROM (VALUES "
             "('ok [[tokens=10,3]] [[cached=4]] [[finish=length]]'), ('bad [[status=400]]'), "
             "('flaky [[status=503 times=1]]')) t(p) "
             "ORDER BY p")
    first = {p.split()[0]: r["details"] for p, r in con.sql(query).fetchall()}
    ok, bad, flaky = first["ok"], first["bad"], first["flaky"]
    assert ok == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13, "finish_reason": "length",
                  "attempts": 1, "cached": False, "status": None, "cached_tokens": 4, "batch_id": None}
    assert bad["status"] == 400 and bad["attempts"] == 1 and bad["prompt_tokens"] is None
    assert flaky["attempts"] == 2 and flaky["cached"] is False
    again = {p.split()[0]: r["details"] for p, r in con.sql(query).fetchall()}
    assert (again["ok"]["cached"], again["ok"]["attempts"], again["bad"]["status"]) == (True, 0, 400)
    with pytest.raises(duckdb.Error, match="details => true needs failOnError => false"):
        con.sql("SELECT ai_query('chat', 'x', details => true)").fetchall()


@pytest.mark.slow  # waits for the progress line's first second
def test_progress_shows_while_a_query_runs_only_when_asked(endpoints, capfd, monkeypatch):
    from aiquery._registration import registration_of

    monkeypatch.delenv("AIQUERY_PROGRESS", raising=False)
    slow = {"chat": {**endpoints["chat"], "max_concurrency": 4}}
    query = "SELECT count(ai_query('chat', 'row ' || i || ' [[sleep=0.2]] [[tokens=7,3]]')) FROM range({n}, {m}) t(i)"
    with aiquery.connect(endpoints=slow) as con:  # not a terminal, not a notebook: nothing shown
        con.sql(query.format(n=0, m=40)).fetchall()
        assert not list(registration_of(con).displays)
    with aiquery.connect(endpoints=slow, progress=True) as con:
        con.sql(query.format(n=40, m=80)).fetchall()
        registration_of(con).settle_displays()  # the line is closed once the query is over
    err = capfd.readouterr().err
    assert "ai_query: 100%|" in err and "40/40 [" in err and "requests=40 " in err and "tokens=400" in err
    monkeypatch.setenv("AIQUERY_PROGRESS", "0")
    with aiquery.connect(endpoints=slow) as con:
        con.sql(query.format(n=80, m=120)).fetchall()
        assert not list(registration_of(con).displays)
    assert "ai_query" not in capfd.readouterr().err


def test_error_kinds_come_from_the_error_class_not_its_text():
    from aiquery._usage import error_kind

    assert error_kind(aiquery.RequestTimeout("endpoint 'chat': the HTTP process hung", endpoint="chat")) == "timeout"
    assert error_kind(aiquery.TransportError("endpoint 'chat': reset within 2 s", endpoint="chat")) == "connection"
    assert error_kind(aiquery.HTTPStatusError("x", endpoint="chat", status=503)) == "http_503"
    assert error_kind(aiquery.BudgetExceeded("budget exceeded")) == "BudgetExceeded"
