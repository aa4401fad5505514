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


def test_429s_in_a_row_set_the_limit_to_what_the_server_accepted_once_per_round():
    limit = AdaptiveLimit(ceiling=256)
    tickets = _fill(limit, 60)
    for ticket in tickets[20:23]:  # a server full after 20: the requests after them are refused
        limit.finish(ticket, throttled=True, failed=True)
    assert limit.limit == SLOW_START  # three 429s in a row could still be chance
    limit.finish(tickets[23], throttled=True, failed=True)  # 20 sent before it are still out
    assert limit.limit == 20 and not limit.slow_start
    limit.finish(tickets[24], throttled=True, failed=True)  # same round: no second cut
    assert limit.limit == 20
    limit.finish(tickets[0], throttled=False, failed=False)  # then a slow additive increase
    assert limit.limit == pytest.approx(20 + PROBE / 20)


def _rounds(limit: AdaptiveLimit, refused, rounds: int) -> None:
    """Sends `rounds` rounds of `limit.limit` requests; `refused(depth, n)` says whether the n-th
    request, sent with `depth` in flight, gets a 429. Each round is answered in sending order."""
    n = 0
    for _ in range(rounds):
        tickets = _fill(limit, int(limit.limit))
        for ticket in tickets:
            limit.finish(ticket, throttled=refused(ticket.depth, n), failed=False)
            n += 1


def test_429s_that_come_whatever_the_load_do_not_lower_the_limit():
    limit = AdaptiveLimit(ceiling=256)
    _rounds(limit, lambda depth, n: n % 10 == 3, rounds=12)  # one request in ten, at every depth
    assert limit.limit == 256 and limit.epoch == 0
    assert limit.background == pytest.approx(0.1, abs=0.03)


def test_429s_only_when_many_are_in_flight_lower_the_limit():
    limit = AdaptiveLimit(ceiling=256)
    _rounds(limit, lambda depth, n: depth >= 40 and n % 10 == 3, rounds=6)  # shallow ones always pass
    assert limit.limit <= 40 and limit.epoch >= 1
    assert limit.background == 0


def test_retries_that_pass_do_not_make_random_429s_look_like_a_full_server():
    """A server that refuses some rows once: their retries, sent a few at a time, always pass."""
    limit = AdaptiveLimit(ceiling=256)
    n = 0
    for _ in range(12):
        refused = []
        for ticket in _fill(limit, int(limit.limit)):
            throttled = n % 10 == 3
            limit.finish(ticket, throttled=throttled, failed=False)
            refused += [ticket] if throttled else []
            n += 1
        for _ in refused:
            limit.finish(limit.start(retry=True), throttled=False, failed=False)
    assert limit.limit == 256 and limit.epoch == 0


def test_other_failures_leave_the_limit_alone():
    limit = AdaptiveLimit(ceiling=16)
    epoch = _fill(limit, 1)[0]
    limit.finish(epoch, throttled=False, failed=True)
    assert limit.limit == 16 and limit.in_flight == 0


def test_requests_per_minute_makes_the_next_request_wait():
    async def admitted_in_time(limits, n, timeout):
        for _ in range(n):
            await limits.admit(1)
        try:
            await asyncio.wait_for(limits.admit(1), timeout=timeout)
            return True
        except asyncio.TimeoutError:
            return False

    limits = EndpointLimits.create(4, rpm=3, tpm=None)
    # 3 a minute: the 4th is due in 20 s, so it is not there after 0.2 s; one that is admitted comes
    # at once, so 30 s only bounds a hang on a busy machine
    assert asyncio.run(admitted_in_time(limits, 3, timeout=0.2)) is False  # the 4th of the minute waits
    tokens = EndpointLimits.create(4, rpm=None, tpm=1000)
    assert asyncio.run(admitted_in_time(tokens, 0, timeout=30)) is True


def test_token_estimate_counts_prompt_and_answer_budget():
    assert estimate_tokens({"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}) >= 150


@pytest.mark.slow
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


@pytest.mark.slow
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
