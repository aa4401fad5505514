"""The many-row functions (aiquery/sql/manyrow.sql): ai_agg, ai_summarize_agg, ai_top_k, ai_join, the cascades
and aiquery_plans(), against a real server on 127.0.0.1 whose answers a test can compute from the request."""

from __future__ import annotations

import json
import math
import re

import duckdb
import pytest

import aiquery
from fakeserver import FakeServer

CANARY = "sk-canary-7f3a9c1e5b"


def system_and_user(body):
    return body["messages"][0]["content"], body["messages"][1]["content"]


def numbered_texts(user: str) -> list[str]:
    """The texts of a numbered list as the many-row functions send it: [1] a\n[2] b."""
    return [t.strip() for t in re.split(r"(?:^|\n)\[\d+\] ", user)[1:]]


def make_con(server, monkeypatch, **chat):
    monkeypatch.setenv("FAKE_KEY", CANARY)
    base = {"provider": "openai", "base_url": server.openai_base, "api_key_env": "FAKE_KEY"}
    return aiquery.connect(endpoints={"chat": {**base, "model": "fake-chat", **chat},
                                      "embed": {**base, "task": "embeddings", "model": "fake-embed", "batch_size": 8}})


def agg_reply(body):
    """Map and combine steps answer how many rows they saw, so the final answer counts every row."""
    system, user = system_and_user(body)
    if "response_format" in body:
        return None
    texts = numbered_texts(user)
    if system.startswith("Each numbered answer"):
        return f"rows={sum(int(t.split('=')[1]) for t in texts)}"
    return f"rows={len(texts)}"


@pytest.fixture
def agg_server():
    with FakeServer(api_key=CANARY, reply=agg_reply) as s:
        yield s


# --- ai_agg / ai_summarize_agg

def test_a_small_group_takes_one_request_with_every_value_and_no_nulls(agg_server, monkeypatch):
    con = make_con(agg_server, monkeypatch)
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES (1, 'late delivery'), (1, NULL), (1, 'broken lid'), "
                "(2, NULL), (3, 'great taste')) v(product, review)")
    rows = con.sql("SELECT product, ai_agg(review, 'What do customers complain about?', endpoint => 'chat') "
                   "FROM t GROUP BY product ORDER BY product").fetchall()
    assert rows == [(1, "rows=2"), (2, None), (3, "rows=1")]
    bodies = agg_server.bodies("/chat/completions")
    assert len(bodies) == 2  # the all-NULL group sends nothing
    users = sorted(numbered_texts(system_and_user(b)[1]) for b in bodies)
    assert users == [["broken lid", "late delivery"], ["great taste"]]
    system = system_and_user(bodies[0])[0]
    assert "Instruction: What do customers complain about?" in system
    assert con.sql("SELECT ai_agg(review, 'x', endpoint => 'chat') FROM t WHERE false").fetchall() == [(None,)]


def test_a_group_twenty_times_the_context_is_mapped_and_combined_without_losing_a_row(agg_server, monkeypatch):
    con = make_con(agg_server, monkeypatch, context_tokens=400, model_parameters={"max_tokens": 20})
    con.execute("CREATE TABLE t AS SELECT 'review ' || i || ': ' || repeat('word ', 20) AS review FROM range(400) r(i)")
    group_tokens = con.sql("SELECT sum(ceil(length(review) / 4)) FROM t").fetchall()[0][0]
    assert group_tokens > 20 * 400
    (answer,), = con.sql("SELECT ai_agg(review, 'Summarize', endpoint => 'chat') FROM t").fetchall()
    assert answer == "rows=400"  # every row counted once through the levels
    bodies = agg_server.bodies("/chat/completions")
    maps = [b for b in bodies if not system_and_user(b)[0].startswith("Each numbered answer")]
    seen = [t for b in maps for t in numbered_texts(system_and_user(b)[1])]
    assert sorted(seen) == sorted(r.strip() for (r,) in con.sql("SELECT review FROM t").fetchall())
    for body in bodies:  # each request's prompt fits the context with the answer's max_tokens
        system, user = system_and_user(body)
        assert math.ceil(len(system) / 4) + math.ceil(len(user) / 4) + 8 + body["max_tokens"] <= 400
    (requests, naive, levels), = con.sql("SELECT requests, naive_requests, figures['max_levels'] "
                                          "FROM aiquery_plans()").fetchall()
    assert requests == len(bodies) and naive == 1 and levels == 2  # the parts, then one combining request


@pytest.mark.slow
def test_every_part_of_every_group_is_in_flight_at_once(monkeypatch):
    with FakeServer(api_key=CANARY, reply=agg_reply, latency=1.0) as server:
        con = make_con(server, monkeypatch, context_tokens=300, model_parameters={"max_tokens": 20})
        con.execute("CREATE TABLE t AS SELECT i % 3 AS g, 'value ' || i || ' ' || repeat('x ', 150) AS v "
                    "FROM range(12) r(i)")
        rows = con.sql("SELECT g, ai_agg(v, 'Count', endpoint => 'chat') FROM t GROUP BY g ORDER BY g").fetchall()
        assert rows == [(0, "rows=4"), (1, "rows=4"), (2, "rows=4")]
        first_level = [r for r in server.requests if not system_and_user(r.body)[0].startswith("Each numbered")]
        assert len(first_level) > 3 and server.peak_in_flight == len(first_level)


def test_a_rerun_is_answered_from_the_cache_and_the_estimate_matches(agg_server, monkeypatch):
    con = make_con(agg_server, monkeypatch, context_tokens=400, model_parameters={"max_tokens": 20})
    con.execute("CREATE TABLE t AS SELECT i % 2 AS g, 'review ' || i || ' ' || repeat('word ', 30) AS r "
                "FROM range(60) r(i)")
    sql = "SELECT g, ai_agg(r, 'Summarize', endpoint => 'chat') FROM t GROUP BY g"
    estimates = {e.endpoint: e for e in aiquery.estimate(con, sql)}
    assert agg_server.requests == []
    first = sorted(con.sql(sql).fetchall())
    sent = len(agg_server.requests)
    # the estimate counts the map requests exactly and the combining ones at their largest
    assert estimates["chat"].requests_to_send >= sent
    assert estimates["chat"].plans == ["ai_agg: map/reduce within 400 context tokens"]
    agg_server.reset()
    assert sorted(con.sql(sql).fetchall()) == first and agg_server.requests == []


def test_ai_summarize_agg_and_failures_per_group(agg_server, monkeypatch):
    con = make_con(agg_server, monkeypatch)
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES (1, 'fine'), (2, 'bad [[status=400]]')) v(g, r)")
    rows = con.sql("SELECT g, ai_summarize_agg(r, endpoint => 'chat', failOnError => false) AS s "
                   "FROM t GROUP BY g ORDER BY g").fetchall()
    assert rows[0] == (1, {"response": "rows=1", "errorMessage": None})
    assert rows[1][1]["response"] is None and "HTTP 400" in rows[1][1]["errorMessage"]
    assert "Summarize the rows" in system_and_user(agg_server.bodies()[0])[0]
    with pytest.raises(duckdb.Error, match="endpoint 'chat': HTTP 400"):
        con.sql("SELECT g, ai_summarize_agg(r, endpoint => 'chat') FROM t GROUP BY g").fetchall()


def test_a_context_too_small_for_two_answers_is_refused_before_sending(agg_server, monkeypatch):
    con = make_con(agg_server, monkeypatch, context_tokens=200, model_parameters={"max_tokens": 100})
    with pytest.raises(duckdb.Error, match="context_tokens 200.*raise context_tokens"):
        con.sql("SELECT ai_agg(x, 'Summarize', endpoint => 'chat') FROM (VALUES ('a')) v(x)").fetchall()
    assert agg_server.requests == []
    with pytest.raises(duckdb.Error, match="needs a chat endpoint"):
        con.sql("SELECT ai_agg(x, 'Summarize', endpoint => 'embed') FROM (VALUES ('a')) v(x)").fetchall()


# --- ai_top_k

def score_of(text: str) -> float:
    found = re.search(r"score (\d+)", text)
    return int(found.group(1)) / 100 if found else 1.0


def scored_embedding(text: str) -> list[float]:
    """The query ("...") points at [1, 0]; "item score S" at an angle that shrinks as S grows."""
    s = score_of(text)
    return [s, 1 - s]


def reverse_ranking(body):
    """A reranker that prefers the candidate listed last."""
    if "ranking" not in json.dumps(body.get("response_format", {})):
        return None
    n = len(numbered_texts(system_and_user(body)[1]))
    k = body["response_format"]["json_schema"]["schema"]["properties"]["ranking"]["maxItems"]
    return json.dumps({"ranking": list(range(n, 0, -1))[:k]})


@pytest.fixture
def rank_server():
    with FakeServer(api_key=CANARY, reply=reverse_ranking, embedding=scored_embedding) as s:
        yield s


def test_top_k_by_embedding_similarity_sends_only_embeddings(rank_server, monkeypatch):
    con = make_con(rank_server, monkeypatch)
    con.execute("CREATE TABLE t AS SELECT i % 2 AS g, 'item score ' || (i + 10) AS x FROM range(40) r(i) "
                "UNION ALL SELECT 0, NULL")
    rows = con.sql("SELECT g, ai_top_k(x, 'the best', 3, rerank => false, embedding_endpoint => 'embed') "
                   "FROM t GROUP BY g ORDER BY g").fetchall()
    assert rows == [(0, ["item score 48", "item score 46", "item score 44"]),
                    (1, ["item score 49", "item score 47", "item score 45"])]
    assert rank_server.bodies("/chat/completions") == []
    assert len(rank_server.bodies("/embeddings")) == math.ceil(41 / 8)  # 40 values and the query, 8 a request


def test_top_k_reranks_the_best_candidates_in_one_request_per_group(rank_server, monkeypatch):
    con = make_con(rank_server, monkeypatch)
    con.execute("CREATE TABLE t AS SELECT 'item score ' || (i + 10) AS x FROM range(50) r(i)")
    (top,), = con.sql("SELECT ai_top_k(x, 'the best', 2, candidates => 5, endpoint => 'chat', "
                      "embedding_endpoint => 'embed') FROM t").fetchall()
    chat = rank_server.bodies("/chat/completions")
    assert len(chat) == 1
    listed = numbered_texts(system_and_user(chat[0])[1])
    assert listed == [f"item score {s}" for s in (59, 58, 57, 56, 55)]  # the 5 most similar, best first
    assert top == ["item score 55", "item score 56"]  # the reranker's order wins
    assert "Query: the best" in system_and_user(chat[0])[0]


def test_top_k_in_windows_when_the_candidates_do_not_fit(rank_server, monkeypatch):
    con = make_con(rank_server, monkeypatch, context_tokens=330, model_parameters={"max_tokens": 20})
    con.execute("CREATE TABLE t AS SELECT 'item score ' || (i + 10) || ' ' || repeat('padding ', 12) AS x "
                "FROM range(30) r(i)")
    (top,), = con.sql("SELECT ai_top_k(x, 'the best', 2, candidates => 12, endpoint => 'chat', "
                      "embedding_endpoint => 'embed') FROM t").fetchall()
    chat = rank_server.bodies("/chat/completions")
    assert len(chat) > 2  # windows, then a final round
    assert len(top) == 2 and all(t.startswith("item score") for t in top)
    assert con.sql("SELECT ai_top_k(x, 'q', 100, rerank => false, embedding_endpoint => 'embed') "
                   "FROM (SELECT x FROM t LIMIT 3)").fetchall()[0][0].__len__() == 3
    with pytest.raises(duckdb.Error, match="k must be a positive integer"):
        con.sql("SELECT ai_top_k(x, 'q', 0, embedding_endpoint => 'embed') FROM t").fetchall()


# --- ai_join

def topic_embedding(text: str) -> list[float]:
    """Texts about topic N (written 'topic N') point the same way; others elsewhere."""
    found = re.search(r"topic (\d+)", text)
    n = int(found.group(1)) if found else 99
    return [math.cos(n * 0.3), math.sin(n * 0.3), 0.01 * (len(text) % 7)]


def same_topic(left: str, right: str) -> bool:
    return re.search(r"topic (\d+)", left).group(1) == re.search(r"topic (\d+)", right).group(1)


def join_reply(body):
    system, user = system_and_user(body)
    if system.startswith("The user message holds a left text"):
        left = user.split("Left text: ", 1)[1].split("\n\nCandidates:\n", 1)[0]
        candidates = numbered_texts(user.split("\n\nCandidates:\n", 1)[1])
        return json.dumps({"matches": [i for i, c in enumerate(candidates, 1) if same_topic(left, c)]})
    if system.startswith("Is this true of the left text"):
        left, right = user.split("Left text: ", 1)[1].split("\n\nRight text: ", 1)
        return json.dumps({"result": same_topic(left, right)})
    if system.startswith("Is this true of the text"):
        return json.dumps({"result": same_topic(user, user.split(" | ", 1)[1])})
    return None


@pytest.fixture
def join_server():
    with FakeServer(api_key=CANARY, reply=join_reply, embedding=topic_embedding) as s:
        yield s


@pytest.fixture
def tickets(join_server, monkeypatch):
    con = make_con(join_server, monkeypatch)
    con.execute("CREATE TABLE tickets AS SELECT i AS id, 'ticket ' || i || ' about topic ' || (i % 10) AS text "
                "FROM range(30) r(i) UNION ALL SELECT 99, NULL")
    con.execute("CREATE TABLE issues AS SELECT i AS id, 'known issue on topic ' || i AS description "
                "FROM range(10) r(i)")
    return con


def test_join_against_a_small_right_table_sends_one_request_per_left_row(tickets, join_server):
    rows = tickets.sql("SELECT id, text, id_1, description FROM ai_join('tickets', 'text', 'issues', 'description', "
                       "'the ticket reports this issue', k => 10, endpoint => 'chat') ORDER BY id").fetchall()
    assert [(r[0], r[2]) for r in rows] == [(i, i % 10) for i in range(30)]
    assert len(join_server.bodies("/chat/completions")) == 30 and join_server.bodies("/embeddings") == []
    assert tickets.sql("SELECT plan, requests, naive_requests FROM aiquery_plans()").fetchall() == [
        ("each left row against every right row, one request per left row", 30, 300)]


def test_join_blocks_candidates_by_embedding_and_matches_the_naive_plan(tickets, join_server):
    sql = ("SELECT id, id_1 FROM ai_join('tickets', 'text', 'issues', 'description', 'the ticket reports this issue', "
           "k => 3, endpoint => 'chat', embedding_endpoint => 'embed') ORDER BY ALL")
    estimates = {e.endpoint: e for e in aiquery.estimate(tickets, sql)}
    assert join_server.requests == []
    assert estimates["chat"].requests_to_send == 30
    assert estimates["chat"].plans == [
        "ai_join: each left row against its 3 most similar right rows by embed, one request per left row"]
    assert estimates["embed"].requests_to_send == math.ceil(40 / 8)
    blocked = tickets.sql(sql).fetchall()
    chat = join_server.bodies("/chat/completions")
    assert len(chat) == 30 and all(len(numbered_texts(system_and_user(b)[1].split("Candidates:\n")[1])) == 3
                                   for b in chat)
    assert len(join_server.bodies("/embeddings")) == math.ceil(40 / 8)
    join_server.reset()
    naive = tickets.sql("SELECT t.id, i.id FROM tickets t JOIN issues i "
                        "ON ai_filter(t.text || ' | ' || i.description, 'same topic', endpoint => 'chat') "
                        "ORDER BY ALL").fetchall()
    assert len(join_server.requests) == 300
    assert blocked == naive == [(i, i % 10) for i in range(30)]


def test_join_per_pair_and_all_pairs(tickets, join_server):
    base = "SELECT id, id_1 FROM ai_join('tickets', 'text', 'issues', 'description', 'same topic', endpoint => 'chat', "
    pairs = tickets.sql(base + "k => 2, per_pair => true, embedding_endpoint => 'embed') ORDER BY ALL").fetchall()
    assert pairs == [(i, i % 10) for i in range(30)] and len(join_server.bodies("/chat/completions")) == 60
    join_server.reset()
    every = tickets.sql(base + "k => 1000, per_pair => true) ORDER BY ALL").fetchall()
    assert every == pairs and len(join_server.bodies("/chat/completions")) == 300 - 60  # 60 pairs were cached
    assert tickets.sql("SELECT requests, cache_hits, naive_requests FROM aiquery_plans() "
                       "WHERE plan LIKE '%every right row, one request per pair'").fetchall() == [(300, 60, 300)]
    assert tickets.sql("SELECT count(*) FROM ai_join('tickets', 'text', 'issues', 'description', 'x', "
                       "endpoint => 'chat') WHERE false").fetchall() == [(0,)]


def test_join_repeated_left_texts_are_asked_once_and_joined_for_every_row(tickets, join_server):
    tickets.execute("INSERT INTO tickets SELECT 100 + id, text FROM tickets WHERE id < 5")
    rows = tickets.sql("SELECT id, id_1 FROM ai_join('tickets', 'text', 'issues', 'description', 'same topic', "
                       "k => 10, endpoint => 'chat') ORDER BY ALL").fetchall()
    assert len(rows) == 35 and (100, 0) in rows and (104, 4) in rows
    assert len(join_server.bodies("/chat/completions")) == 30


# --- cascades

def label_of(text: str) -> bool:
    return text.startswith("praise")


def sentiment_embedding(text: str) -> list[float]:
    """Praise and complaints lie apart; a few ambiguous texts ('mixed') sit in between."""
    n = int(re.search(r"(\d+)", text).group(1))
    if "mixed" in text:
        return [1.0, 1.0, (n % 5) / 5]
    return [1.0, 0.05 * (n % 3), (n % 5) / 5] if label_of(text) else [0.05 * (n % 3), 1.0, (n % 5) / 5]


def label_reply(body):
    system, user = system_and_user(body)
    if system.startswith("Is this true of the text"):
        return json.dumps({"result": label_of(user)})
    if system.startswith("Classify the text"):
        return json.dumps({"label": "fresh" if label_of(user) else "rotten"})
    return None


@pytest.fixture
def label_server():
    with FakeServer(api_key=CANARY, reply=label_reply, embedding=sentiment_embedding) as s:
        yield s


@pytest.fixture
def reviews(label_server, monkeypatch):
    con = make_con(label_server, monkeypatch)
    con.execute("CREATE TABLE reviews AS SELECT i AS id, CASE WHEN i % 2 = 0 THEN 'praise ' ELSE 'complaint ' END "
                "|| i || CASE WHEN i % 25 = 0 THEN ' mixed' ELSE '' END AS text FROM range(600) r(i) "
                "UNION ALL SELECT 1000, NULL")
    return con


def test_a_cascade_sends_only_the_sample_and_the_unsure_rows(reviews, label_server):
    rows = reviews.sql("SELECT id, ai_filter_cascade(text, 'the review praises the film', proxy => 'embed', "
                       "endpoint => 'chat') AS ok FROM reviews ORDER BY id").fetchall()
    assert rows[-1] == (1000, None)
    truth = {i: label_of(t) for i, t in reviews.sql("SELECT id, text FROM reviews WHERE text IS NOT NULL").fetchall()}
    agreement = sum(ok == truth[i] for i, ok in rows[:-1]) / 600
    assert agreement >= 0.9
    sent = len(label_server.bodies("/chat/completions"))
    assert 100 <= sent < 300  # the sample of 100, and the rows the proxy was unsure of
    (figures,), = reviews.sql("SELECT figures FROM aiquery_plans()").fetchall()
    assert figures["sample_rows"] == 100 and figures["agreement"] >= 0.9 and figures["proxy_trained"] == 1
    assert figures["proxy_rows"] + figures["endpoint_rows"] == 600 and figures["endpoint_rows"] == sent


def test_the_cascade_asks_what_ai_filter_asks_so_they_share_the_cache(reviews, label_server):
    plain = reviews.sql("SELECT id, ai_filter(text, 'the review praises the film', endpoint => 'chat') "
                        "FROM reviews ORDER BY id").fetchall()
    label_server.reset()
    cascade = reviews.sql("SELECT id, ai_filter_cascade(text, 'the review praises the film', target => 1.0, "
                          "proxy => 'embed', endpoint => 'chat') FROM reviews ORDER BY id").fetchall()
    assert label_server.bodies("/chat/completions") == []  # every request it made was ai_filter's, cached
    assert [ok for _, ok in cascade] == [ok for _, ok in plain]


def test_a_proxy_with_nothing_to_learn_sends_every_row(label_server, monkeypatch):
    con = make_con(label_server, monkeypatch)
    con.execute("CREATE TABLE t AS SELECT 'praise ' || i AS text FROM range(150) r(i)")  # one answer only
    rows = con.sql("SELECT ai_classify_cascade(text, ['fresh', 'rotten'], proxy => 'embed', endpoint => 'chat') "
                   "FROM t").fetchall()
    assert rows == [("fresh",)] * 150 and len(label_server.bodies("/chat/completions")) == 150
    (figures,), = con.sql("SELECT figures FROM aiquery_plans()").fetchall()
    assert figures["proxy_trained"] == 0 and figures["endpoint_rows"] == 150


def test_cascade_arguments_are_checked(reviews, label_server):
    for call, message in [("target => 1.5", "target must be an agreement between 0 and 1"),
                          ("sample => 2", "sample must be an integer of at least 6"),
                          ("proxy => 'chat'", "needs a embeddings endpoint")]:
        with pytest.raises(duckdb.Error, match=message):
            reviews.sql(f"SELECT ai_filter_cascade(text, 'x', {call}, endpoint => 'chat', proxy => 'embed') "
                        "FROM reviews").fetchall() if "proxy" not in call else \
                reviews.sql(f"SELECT ai_filter_cascade(text, 'x', {call}, endpoint => 'chat') FROM reviews").fetchall()
    assert label_server.requests == []


def test_the_estimate_command_prints_the_join_plan(join_server, monkeypatch, tmp_path, capsys):
    from aiquery._cli import main

    monkeypatch.setenv("FAKE_KEY", CANARY)
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{join_server.openai_base}"\nmodel = "fake-chat"\n'
                      'api_key_env = "FAKE_KEY"\n'
                      f'[endpoints.embed]\ntask = "embeddings"\nbase_url = "{join_server.openai_base}"\n'
                      'model = "fake-embed"\napi_key_env = "FAKE_KEY"\n')
    sql = ("CREATE TABLE a AS SELECT 'ticket about topic ' || i AS t FROM range(40) r(i); "
           "CREATE TABLE b AS SELECT 'issue on topic ' || i AS d FROM range(30) r(i); "
           "SELECT * FROM ai_join('a', 't', 'b', 'd', 'same topic', k => 4, endpoint => 'chat', "
           "embedding_endpoint => 'embed')")
    assert main(["estimate", "--config", str(config), "-e", sql]) == 0
    out = capsys.readouterr().out
    assert "chat: plan of ai_join: each left row against its 4 most similar right rows by embed" in out
    chat_line = next(line for line in out.splitlines() if line.startswith("chat "))
    assert chat_line.split()[5] == "40"  # requests: one per left row, not 40 x 30
    assert join_server.requests == []


def test_join_by_default_lists_every_right_row_when_it_fits_and_blocks_when_not(join_server, monkeypatch):
    con = make_con(join_server, monkeypatch)
    small = make_con(join_server, monkeypatch, context_tokens=400, model_parameters={"max_tokens": 20})
    for c in (con, small):
        c.execute("CREATE TABLE a AS SELECT 'ticket about topic ' || i AS t FROM range(8) r(i)")
        c.execute("CREATE TABLE b AS SELECT 'issue on topic ' || i || ' ' || repeat('detail ', 30) AS d "
                  "FROM range(40) r(i)")
    sql = ("SELECT t, d FROM ai_join('a', 't', 'b', 'd', 'same topic', endpoint => 'chat', "
           "embedding_endpoint => 'embed') ORDER BY ALL")
    rows = con.sql(sql).fetchall()
    assert len(rows) == 8 and all(same_topic(t, d) for t, d in rows)
    assert len(join_server.bodies("/chat/completions")) == 8 and join_server.bodies("/embeddings") == []
    join_server.reset()
    small.sql(sql).fetchall()  # 40 right rows take more than 4 requests of 400 tokens: the 10 most similar
    chat = join_server.bodies("/chat/completions")
    assert join_server.bodies("/embeddings") and len(chat) >= 8
    listed = [t for b in chat for t in numbered_texts(system_and_user(b)[1].split("Candidates:\n")[1])]
    assert len(listed) == 8 * 10
    assert small.sql("SELECT plan FROM aiquery_plans()").fetchall() == [
        ("each left row against its 10 most similar right rows by embed, one request per left row",)]
