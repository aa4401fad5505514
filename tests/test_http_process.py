"""The default transport: aiohttp in a child process, reached over a socket pair."""

import os
import signal

import pytest

import aiquery
from aiquery._http_process import ProcessTransport
from waiting import wait_for


def _connection(endpoints, **chat):
    engine = aiquery.Engine(transport=ProcessTransport())
    return aiquery.connect(endpoints={"chat": {**endpoints["chat"], **chat}}, engine=engine), engine


def test_answers_come_back_through_the_child_process(endpoints, server):
    con, engine = _connection(endpoints)
    result = con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(500) t(i)").fetchall()
    assert sorted(r[0] for r in result) == sorted(f"echo: row {i}" for i in range(500))
    assert server.requests[0].headers["authorization"] == "Bearer sk-canary-7f3a9c1e5b"
    child = engine._mounts["http://"]._process
    assert child is not None and child.poll() is None
    con.close()
    engine.close()
    assert child.poll() is not None  # closing the engine ends the child


@pytest.mark.slow
def test_timeouts_and_resets_are_reported_per_row(endpoints, server):
    # the fine row has two attempts of 1 s, a busy machine's worth; the slow row sleeps past them all
    con, _ = _connection(endpoints, timeout=1, max_attempts=2)
    rows = dict(con.sql("""SELECT p, ai_query('chat', p, failOnError => false).errorMessage
                           FROM (VALUES ('slow [[sleep=60]]'), ('cut [[reset]]'), ('fine')) t(p)""").fetchall())
    assert "no complete answer" in rows["slow [[sleep=60]]"] and "within 1 s" in rows["slow [[sleep=60]]"]
    assert "request failed to" in rows["cut [[reset]]"]
    assert rows["fine"] is None
    kinds = con.execute("SELECT error_kinds FROM aiquery_usage() WHERE endpoint = 'chat'").fetchone()[0]
    assert kinds == {"timeout": 1, "connection": 1}  # by the error's class (RequestTimeout), not its text


def test_ctrl_c_does_not_stop_the_child(endpoints, server):
    con, engine = _connection(endpoints)
    con.sql("SELECT ai_query('chat', 'warm up')").fetchall()
    child = engine._mounts["http://"]._process
    os.kill(child.pid, signal.SIGINT)  # what a terminal sends the whole process group
    # the signal is handled before the child reads the next request: had it died, a new child would answer
    assert con.sql("SELECT ai_query('chat', 'still here')").fetchall() == [("echo: still here",)]
    assert engine._mounts["http://"]._process is child and child.poll() is None


def test_a_new_child_takes_over_when_one_dies(endpoints, server):
    con, engine = _connection(endpoints)
    con.sql("SELECT ai_query('chat', 'first')").fetchall()
    first = engine._mounts["http://"]._process
    first.kill()
    first.wait()
    wait_for(lambda: engine._mounts["http://"]._process is None, what="the parent to notice the closed socket")
    assert con.sql("SELECT ai_query('chat', 'second')").fetchall() == [("echo: second",)]
    assert engine._mounts["http://"]._process.pid != first.pid
