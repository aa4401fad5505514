"""aiquery.estimate() and `aiquery estimate`: what a statement would send and cost, with no model called."""

from __future__ import annotations

import math

import pytest

import aiquery
from aiquery._cli import main as cli


@pytest.fixture
def table(con):
    con.execute("CREATE TABLE t AS SELECT i, CASE WHEN i % 10 = 9 THEN NULL ELSE 'prompt ' || (i % 50) END AS p "
                "FROM range(200) r(i)")
    return con


def by_endpoint(estimates):
    return {e.endpoint: e for e in estimates}


def test_the_estimate_sends_nothing_and_changes_nothing(table, server):
    estimates = aiquery.estimate(table, "CREATE TABLE scored AS SELECT ai_query('chat', p) AS a FROM t; "
                                        "INSERT INTO t SELECT 1000, ai_query('chat', 'new')")
    assert server.requests == []
    assert table.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'scored'").fetchall() == [(0,)]
    assert table.sql("SELECT count(*) FROM t").fetchall() == [(200,)]
    chat = by_endpoint(estimates)["chat"]
    assert (chat.rows, chat.distinct_requests) == (181, 46)  # 180 non-NULL prompts of 45 kinds, plus 'new'
    assert table.sql("SELECT count(ai_query('chat', p)) FROM t").fetchall() == [(180,)]  # still works after
    assert len(server.requests) == 45


def test_cache_hits_tokens_cost_and_time(table, server, endpoints, tmp_path):
    table.sql("SELECT ai_query('chat', p) FROM t WHERE i < 20").fetchall()  # prompts 0-18 answered (19 is NULL)
    server.reset()
    (chat,) = aiquery.estimate(table, "SELECT ai_query('chat', p, modelParameters => {'max_tokens': 30}) FROM t")
    assert chat.cache_hits == 0  # max_tokens changes the request: nothing cached matches
    (chat,) = aiquery.estimate(table, "SELECT ai_query('chat', p) FROM t")
    assert (chat.rows, chat.distinct_requests, chat.cache_hits, chat.requests_to_send) == (180, 45, 18, 27)
    to_send = [f"prompt {k}" for k in range(50) if k % 10 != 9 and k >= 19]
    assert chat.prompt_tokens == sum(4 + math.ceil(len(text) / 4) for text in to_send)
    assert chat.token_count == "approximate: 4 characters per token"
    assert chat.completion_tokens is not None  # from the endpoint's answers so far
    assert chat.cost_usd is None and chat.cost_covers is None  # no price for fake-chat
    assert server.requests == []

    config = tmp_path / "aiquery.toml"
    config.write_text('[prices."fake-embed"]\ninput = 1.0\noutput = 0.0\n')
    limited = {**endpoints, "embed": {**endpoints["embed"], "max_concurrency": 2, "requests_per_minute": 60}}
    with aiquery.connect(endpoints=limited, config=config, engine=aiquery.Engine()) as con:
        (embed,) = aiquery.estimate(con, "SELECT ai_query('embed', 'text ' || i) FROM range(100) t(i)")
    assert (embed.rows, embed.requests_to_send) == (100, 25)  # batch_size 4
    assert embed.cost_usd == pytest.approx(embed.prompt_tokens / 1e6)
    assert embed.seconds == pytest.approx(25.0)  # 60 requests per minute: 1 per second
    assert embed.time_basis == "assumed latency 1 s"


def test_a_connection_without_aiquery_is_refused():
    import duckdb

    with pytest.raises(aiquery.ArgumentError, match="this connection has no aiquery functions"):
        aiquery.estimate(duckdb.connect(), "SELECT 1")


def test_the_estimate_command(tmp_path, server, endpoints, capsys, monkeypatch):
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{server.openai_base}"\nmodel = "gpt-4o-mini"\n')
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    assert cli(["estimate", "-e", "SELECT ai_query('chat', 'row ' || i) FROM range(10) t(i)",
                "--config", str(config)]) == 0
    out = capsys.readouterr().out
    chat = next(line for line in out.splitlines() if line.startswith("chat "))
    assert chat.split()[:6] == ["chat", "gpt-4o-mini", "10", "10", "0", "10"]
    assert "tokens: approximate: 4 characters per token" in out and "cost covers prompt" in out
    assert server.requests == []


@pytest.mark.local_models
def test_builtin_models_are_counted_with_their_own_tokenizers(con):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("tokenizers")
    estimates = by_endpoint(aiquery.estimate(con, "SELECT ai_query('local-embed', 'hello world'), "
                                                  "ai_query('local-chat', 'hello world')"))
    assert estimates["local-embed"].token_count == "all-minilm-l6-v2 tokenizer"
    assert estimates["local-embed"].prompt_tokens == 4  # [CLS] hello world [SEP]
    assert estimates["local-chat"].token_count == "smollm2-135m-instruct tokenizer"
    assert estimates["local-chat"].prompt_tokens == 4 + 2  # message overhead + 'hello', ' world'
