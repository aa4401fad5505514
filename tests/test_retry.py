"""The retry policy as a table, and the engine retrying against the real fake server without sleeping."""

import email.utils
import random

import pytest

import aiquery
from aiquery import Engine
from aiquery._retry import BACKOFF_MAX, MAX_RETRY_AFTER, backoff, is_retryable_status, parse_retry_after


@pytest.mark.parametrize("status, retryable", [
    (400, False), (401, False), (403, False), (404, False), (422, False),
    (408, True), (409, True), (429, True), (500, True), (502, True), (503, True), (504, True),
])
def test_which_statuses_are_retried(status, retryable):
    assert is_retryable_status(status) is retryable


NOW = 1_700_000_000.0


@pytest.mark.parametrize("headers, seconds", [
    ({}, None),
    ({"retry-after": "3"}, 3.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": email.utils.formatdate(NOW + 7, usegmt=True)}, 7.0),
    ({"retry-after": "nan"}, None), ({"retry-after": "inf"}, None), ({"retry-after-ms": "nan"}, None),
    ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0), ({"retry-after": "-30"}, 0.0),
    ({"retry-after": "1000000000000"}, MAX_RETRY_AFTER), ({"retry-after": "Fri, 31 Dec 99999 23:59:59 GMT"}, None),
    ({"retry-after": "\ufffd\ufffd"}, None),
    ({"retry-after": email.utils.formatdate(NOW - 7, usegmt=True)}, 0.0),
    ({"retry-after": "3600"}, MAX_RETRY_AFTER),
    ({"retry-after": "soon"}, None),
])
def test_retry_after_in_ms_seconds_or_http_date(headers, seconds):
    assert parse_retry_after(headers, now=NOW) == seconds


def test_backoff_is_capped_exponential_with_full_jitter():
    assert [backoff(n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5, 6, 10)] == [0.5, 1, 2, 4, 8, BACKOFF_MAX, BACKOFF_MAX]
    assert backoff(3, rand=lambda: 0.0) == 0.0


def _engine_connection(endpoints, sleeps, jitter=random.random, **chat):
    """A connection whose engine records the waits it would make instead of sleeping."""
    async def fake_sleep(seconds):
        sleeps.append(seconds)

    engine = Engine(sleep=fake_sleep, jitter=jitter)
    return aiquery.connect(endpoints={"chat": {**endpoints["chat"], **chat}}, engine=engine), engine


def test_transient_errors_are_retried_to_the_right_answer(endpoints, server):
    sleeps = []
    con, engine = _engine_connection(endpoints, sleeps)
    result = con.sql("SELECT ai_query('chat', 'hi [[status=503 times=2 retry_after=4]]')").fetchall()[0]
    assert result == ("echo: hi [[status=503 times=2 retry_after=4]]",)
    assert [r.status for r in server.requests] == [503, 503, 200]
    assert sleeps == [4.0, 4.0]  # the server's Retry-After, honoured without really sleeping
    stats = engine.stats()["chat"]
    assert (stats.requests, stats.retries, stats.errors) == (3, 2, 0)


def test_a_429_is_retried_and_counted_as_throttling(endpoints, server):
    sleeps = []
    con, engine = _engine_connection(endpoints, sleeps)
    assert con.sql("SELECT ai_query('chat', 'x [[status=429 times=1 retry_after_ms=250]]')").fetchall()[0][0].startswith("echo")
    assert sleeps == [0.25] and engine.stats()["chat"].throttled == 1


def test_retries_stop_after_max_attempts(endpoints, server):
    sleeps = []
    con, engine = _engine_connection(endpoints, sleeps, max_attempts=3)
    result = con.sql("SELECT ai_query('chat', 'x [[status=500]]', failOnError => false)").fetchall()[0][0]
    assert "HTTP 500" in result["errorMessage"]
    assert len(server.requests) == 3 and len(sleeps) == 2


def test_client_errors_are_not_retried(endpoints, server):
    sleeps = []
    con, engine = _engine_connection(endpoints, sleeps)
    con.sql("SELECT ai_query('chat', 'x [[status=400]]', failOnError => false)").fetchall()
    assert len(server.requests) == 1 and sleeps == [] and engine.stats()["chat"].errors == 1


class _Draws:
    """A seeded jitter source that keeps what it drew."""

    def __init__(self, seed):
        self._random, self.drawn = random.Random(seed), []

    def __call__(self):
        self.drawn.append(self._random.random())
        return self.drawn[-1]


def test_each_retry_draws_its_wait_once_and_sleeps_that_wait(endpoints, server):
    sleeps, draws = [], _Draws(7)
    con, _ = _engine_connection(endpoints, sleeps, jitter=draws, max_attempts=4)
    result = con.sql("SELECT ai_query('chat', 'x [[status=500]]', failOnError => false)").fetchall()[0][0]
    assert "HTTP 500" in result["errorMessage"] and len(server.requests) == 4
    assert len(draws.drawn) == 3  # one draw per retry; none for the last failure, which max_attempts ends
    assert sleeps == [backoff(n, rand=lambda d=d: d) for n, d in enumerate(draws.drawn, 1)]


def test_the_wait_that_fits_max_retry_time_is_the_wait_slept(endpoints, server):
    # jitter 0.9: waits of 0.45, 0.9 and 1.8 s; only the first two fit in 1.5 s (the fake sleep takes no time)
    sleeps, draws = [], []
    con, _ = _engine_connection(endpoints, sleeps, jitter=lambda: draws.append(0.9) or 0.9, max_attempts=10,
                                max_retry_time=1.5)
    con.sql("SELECT ai_query('chat', 'x [[status=503]]', failOnError => false)").fetchall()
    assert sleeps == [0.45, 0.9] and len(server.requests) == 3
    assert len(draws) == 3  # two waits slept, and the third, which did not fit, drawn once to decide so
