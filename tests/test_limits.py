"""Endpoint limits: adaptive concurrency on 429, per-minute limits, and limits shared by connections."""

import asyncio
import threading

import pytest

import aiquery
from aiquery._limits import PROBE, SLOW_START, AdaptiveLimit, EndpointLimits, estimate_tokens
from fakeserver import FakeServer


def _fill(limit: AdaptiveLimit, n: int) -> list:
    return [limit.start() for _ in range(n)]


def test_slow_start_grows_by_one_per_success_up_to_the_ceiling():
    limit = AdaptiveLimit(ceiling=200)
    assert limit.limit == SLOW_START
    epochs = _fill(limit, SLOW_START)
    for epoch in epochs:
        limit.finish(epoch, throttled=False, failed=False)
    assert limit.limit == 2 * SLOW_START
    small = AdaptiveLimit(ceiling=8)
    assert small.limit == 8 and not small.slow_start


def test_a_429_sets_the_limit_to_what_the_server_accepted_once_per_round():
    limit = AdaptiveLimit(ceiling=256)
    tickets = _fill(limit, 60)
    limit.finish(tickets[20], throttled=True, failed=True)  # 20 sent before it are still out
    assert limit.limit == 20 and not limit.slow_start
    limit.finish(tickets[21], throttled=True, failed=True)  # same round: no second cut
    assert limit.limit == 20
    limit.finish(tickets[0], throttled=False, failed=False)  # then a slow additive increase
    assert limit.limit == pytest.approx(20 + PROBE / 20)


def test_other_failures_leave_the_limit_alone():
    limit = AdaptiveLimit(ceiling=16)
    epoch = _fill(limit, 1)[0]
    limit.finish(epoch, throttled=False, failed=True)
    assert limit.limit == 16 and limit.in_flight == 0


def test_requests_per_minute_makes_the_next_request_wait():
    async def admitted_in_time(limits, n):
        for _ in range(n):
            await limits.admit(1)
        try:
            await asyncio.wait_for(limits.admit(1), timeout=0.2)
            return True
        except asyncio.TimeoutError:
            return False

    limits = EndpointLimits.create(4, rpm=3, tpm=None)
    assert asyncio.run(admitted_in_time(limits, 3)) is False  # the 4th of the minute waits
    tokens = EndpointLimits.create(4, rpm=None, tpm=1000)
    assert asyncio.run(admitted_in_time(tokens, 0)) is True


def test_token_estimate_counts_prompt_and_answer_budget():
    assert estimate_tokens({"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}) >= 150


def test_a_server_with_a_lower_limit_is_found_without_many_429s(endpoints, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    with FakeServer(api_key="k", latency=0.02, max_concurrency=20, retry_after="0") as limited:
        settings = {"chat": {**endpoints["chat"], "base_url": limited.openai_base, "max_concurrency": 256}}
        with aiquery.connect(endpoints=settings) as con:
            result = con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(2000) t(i)").fetchall()
        assert sorted(r[0] for r in result) == sorted(f"echo: row {i}" for i in range(2000))
        throttled = sum(r.status == 429 for r in limited.requests)
        assert limited.peak_in_flight <= 20
        assert throttled < 0.05 * 2000, f"{throttled} answers were 429"


def test_connections_share_an_endpoints_limit(endpoints, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    with FakeServer(api_key="k", latency=0.05) as slow:
        settings = {"chat": {**endpoints["chat"], "base_url": slow.openai_base, "max_concurrency": 6}}
        connections = [aiquery.connect(endpoints=settings) for _ in range(3)]

        def run(con, n):
            con.sql(f"SELECT ai_query('chat', 'c{n} ' || i) FROM range(60) t(i)").fetchall()

        threads = [threading.Thread(target=run, args=(c, n)) for n, c in enumerate(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for con in connections:
            con.close()
        assert len(slow.requests) == 180
        assert slow.peak_in_flight == 6  # three connections, one limit
