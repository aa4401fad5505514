"""Cached prompt tokens: read from every provider's spelling, counted, priced; prefix-aware
dispatch and prompt_cache_key, checked against the fake server's modelled prefix cache."""

from __future__ import annotations

import json

import pytest

import aiquery
from aiquery import _wire
from fakeserver import FakeServer

LONG_A = "Instructions A: label the review fresh or rotten. " + "Read it closely and weigh every word. " * 40
LONG_B = "Instructions B: name the main subject of the review. " + "Say it in one or two words only. " * 40


@pytest.mark.parametrize("usage, expected", [
    # OpenAI, llama.cpp's llama-server, vLLM, Gemini's OpenAI API: cached_tokens among prompt_tokens
    ({"prompt_tokens": 443, "completion_tokens": 4, "total_tokens": 447,
      "prompt_tokens_details": {"cached_tokens": 434}},
     {"prompt_tokens": 443, "completion_tokens": 4, "total_tokens": 447, "cached_tokens": 434}),
    # OpenAI's Responses API and batch objects
    ({"input_tokens": 100, "output_tokens": 7, "input_tokens_details": {"cached_tokens": 64}},
     {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107, "cached_tokens": 64}),
    # Anthropic: input_tokens leaves out the tokens read from (and written to) the cache
    ({"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 30},
     {"prompt_tokens": 1050, "completion_tokens": 5, "total_tokens": 1055, "cached_tokens": 1000}),
    # DeepSeek
    ({"prompt_tokens": 900, "completion_tokens": 10, "total_tokens": 910, "prompt_cache_hit_tokens": 768,
      "prompt_cache_miss_tokens": 132},
     {"prompt_tokens": 900, "completion_tokens": 10, "total_tokens": 910, "cached_tokens": 768}),
    # no cache information: no cached_tokens, rather than a made-up 0
    ({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
     {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
])
def test_cached_tokens_in_every_providers_spelling(usage, expected):
    body = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": usage}
    answer = _wire.parse_chat(json.dumps(body).encode(), "e", {})
    assert {k: answer.usage[k] for k in expected} == expected
    assert ("cached_tokens" in answer.usage) == ("cached_tokens" in expected)


def test_llama_cpp_timings_without_a_usage_field():
    body = {"choices": [{"message": {"content": "ok"}}], "timings": {"cache_n": 434, "prompt_n": 9, "predicted_n": 4}}
    assert _wire.parse_chat(json.dumps(body).encode(), "e", {}).usage == {
        "prompt_tokens": 443, "completion_tokens": 4, "total_tokens": 447, "cached_tokens": 434}


@pytest.fixture
def engine():
    engine = aiquery.Engine()
    yield engine
    engine.close()


def chat_endpoint(server, **settings):
    return {"chat": {"base_url": server.openai_base, "model": "gpt-4o-mini", "max_concurrency": 1, **settings}}


def interleaved(con, rows=40):
    con.execute(f"CREATE OR REPLACE TABLE jobs AS SELECT i, CASE WHEN i % 2 = 0 THEN '{LONG_A}' ELSE '{LONG_B}' END "
                f"|| ' Review ' || i AS prompt FROM range({rows}) t(i)")
    return con.sql("SELECT i, ai_query('chat', prompt) FROM jobs ORDER BY i").fetchall()


def switches(server) -> int:
    firsts = [body["messages"][0]["content"][:15] for body in server.bodies("/chat/completions")]
    return sum(1 for a, b in zip(firsts, firsts[1:]) if a != b)


@pytest.mark.parametrize("dispatch", [True, False])
def test_prefix_dispatch_sends_shared_prefixes_together_and_they_are_cached(dispatch, engine, cache_dir):
    with FakeServer(prefix_cache=1) as server:
        with aiquery.connect(endpoints=chat_endpoint(server, prefix_dispatch=dispatch), engine=engine) as con:
            rows = interleaved(con)
            usage = con.sql("SELECT prompt_tokens, cached_tokens, cost_usd FROM aiquery_usage()").fetchall()[0]
    assert [r[1] for r in rows] == [f"echo: {LONG_A if i % 2 == 0 else LONG_B} Review {i}" for i in range(40)]
    prompt, cached, cost = usage
    words_a, words_b = len(LONG_A.split()), len(LONG_B.split())
    if dispatch:  # one switch from A's rows to B's: all but the first of each read their instructions cached
        # ("Instructions" and "Review" shared too; the first B row shares "Instructions" with the last A row)
        assert switches(server) == 1 and cached == 19 * (words_a + 1) + 19 * (words_b + 1) + 1
    else:  # A, B, A, B...: the one-slot cache never holds the next request's prefix
        assert switches(server) == 39 and cached == 39 * 1  # "Instructions" only
    completion = sum(len(r[1].split()) for r in rows)
    assert cost == pytest.approx(((prompt - cached) * 0.15 + cached * 0.075 + completion * 0.60) / 1e6)


def test_short_prompts_keep_row_order(engine, cache_dir):
    with FakeServer() as server:
        with aiquery.connect(endpoints=chat_endpoint(server), engine=engine) as con:
            con.sql("SELECT ai_query('chat', 'row ' || (9 - i)) FROM range(10) t(i)").fetchall()
    assert [b["messages"][0]["content"] for b in server.bodies()] == [f"row {9 - i}" for i in range(10)]


@pytest.mark.slow
def test_prompt_cache_key_is_shared_by_requests_with_the_same_long_start(engine, cache_dir):
    with FakeServer() as server:
        with aiquery.connect(endpoints=chat_endpoint(server, prompt_cache_key=True), engine=engine) as con:
            interleaved(con, rows=4)
            con.sql("SELECT ai_query('chat', 'short ' || i) FROM range(2) t(i)").fetchall()
        keys = {b["messages"][0]["content"][:15]: b["prompt_cache_key"] for b in server.bodies()}
        assert keys["Instructions A:"] != keys["Instructions B:"]
        by_prefix = {}
        for body in server.bodies()[:4]:
            by_prefix.setdefault(body["messages"][0]["content"][:15], set()).add(body["prompt_cache_key"])
        assert all(len(v) == 1 for v in by_prefix.values()) and len(by_prefix) == 2
        assert keys["short 0"] != keys["short 1"] and all(k.startswith("aiquery-") for k in keys.values())
        server.reset()
        with aiquery.connect(endpoints=chat_endpoint(server), engine=engine) as con:  # off by default
            con.sql("SELECT ai_query('chat', 'plain')").fetchall()
        assert "prompt_cache_key" not in server.bodies()[0]


def test_the_estimate_counts_cached_tokens_and_batch_prices(engine, cache_dir, tmp_path):
    with FakeServer() as server:
        endpoints = chat_endpoint(server)
        with aiquery.connect(endpoints=endpoints, engine=engine) as con:
            con.sql("SELECT ai_query('chat', 'seen [[tokens=100,10]] [[cached=40]]')").fetchall()
            (online,) = aiquery.estimate(con, "SELECT ai_query('chat', repeat('word ', 99) || i) FROM range(10) t(i)")
            (batched,) = aiquery.estimate(con, "SELECT ai_query('chat', repeat('word ', 99) || i, batch => true) "
                                               "FROM range(10) t(i)")
    assert online.cached_tokens == round(online.prompt_tokens * 0.4) and online.batched == 0
    expected = ((online.prompt_tokens - online.cached_tokens) * 0.15 + online.cached_tokens * 0.075
                + online.completion_tokens * 0.60) / 1e6
    assert online.cost_usd == pytest.approx(expected)
    assert batched.batched == 10 and batched.cost_usd == pytest.approx(expected / 2)
    assert "batched rows take up to 24h more" in batched.time_basis and batched.seconds == 0
