"""The response cache, interrupts and resume: never pay twice for the same answer."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import duckdb
import orjson
import pytest

import aiquery
from aiquery import _cache
from aiquery._cli import main as cli
from aiquery._registration import registration_of
from conftest import CANARY_KEY
from fakeserver import FakeServer
from waiting import settle, wait_for

ROOT = Path(__file__).resolve().parent.parent


def prompts(server) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in server.requests if r.path.endswith("/chat/completions")]


def cached_entries(cache_dir: Path) -> int:
    _cache.open_cache(cache_dir / _cache.FILE_NAME).flush()  # the process's cache for that file
    with sqlite3.connect(cache_dir / _cache.FILE_NAME) as db:
        return db.execute("SELECT count(*) FROM responses").fetchone()[0]


def test_a_second_run_sends_nothing_and_returns_the_same_rows(con, server):
    query = ("SELECT id, ai_query('chat', 'row ' || id) AS a, ai_query('embed', 'text ' || id) AS e "
             "FROM range(50) t(id) ORDER BY id")
    first = con.sql(query).fetchall()
    sent = len(server.requests)
    assert sent == 50 + 13  # 50 chat requests, 50 texts in embeddings requests of 4
    server.reset()
    assert con.sql(query).fetchall() == first
    assert server.requests == []


def test_a_new_connection_and_a_new_process_find_the_answers(endpoints, server, cache_dir):
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(20) t(i)").fetchall()
    _cache.close_all()
    server.reset()
    with aiquery.connect(endpoints=endpoints) as con:
        assert len(con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(25) t(i)").fetchall()) == 25
    assert sorted(prompts(server)) == [f"row {i}" for i in range(20, 25)]


@pytest.mark.slow
def test_the_key_covers_parameters_response_format_model_and_url(con, endpoints, server):
    base = "SELECT ai_query('chat', 'same prompt'{})"
    variants = ["", ", modelParameters => {'temperature': 0.5}", ", modelParameters => {'temperature': 0.7}",
                ", responseFormat => '{\"type\": \"json_object\"}'"]
    for extra in variants + variants:  # the second round is all cache hits
        con.sql(base.format(extra)).fetchall()
    assert len(server.requests) == len(variants)
    other_model = {**endpoints, "chat": {**endpoints["chat"], "model": "another-model"}}
    with aiquery.connect(endpoints=other_model) as con2:
        con2.sql(base.format("")).fetchall()
    assert len(server.requests) == len(variants) + 1
    with FakeServer(api_key=CANARY_KEY) as elsewhere:
        moved = {**endpoints, "chat": {**endpoints["chat"], "base_url": elsewhere.openai_base}}
        with aiquery.connect(endpoints=moved) as con3:
            con3.sql(base.format("")).fetchall()
        assert len(elsewhere.requests) == 1


def test_a_new_property_order_is_a_new_request_and_sorted_schemas_keep_their_old_key(con, server, cache_dir):
    """The model sees properties in the declared order, so another order is another request. A
    schema already in sorted order keeps the key it had when bodies were sent with sorted keys,
    so answers cached then still count."""
    reason_first = "SELECT ai_query('chat', 'q', responseFormat => 'STRUCT<reasoning: STRING, answer: STRING>')"
    answer_first = "SELECT ai_query('chat', 'q', responseFormat => 'STRUCT<answer: STRING, reasoning: STRING>')"
    for sql in (reason_first, answer_first, reason_first, answer_first):
        con.sql(sql).fetchall()
    assert [list(r.body["response_format"]["json_schema"]["schema"]["properties"]) for r in server.requests] == [
        ["reasoning", "answer"], ["answer", "reasoning"]]
    # answer_first is sorted: its key is the digest of the sorted body, the formula of earlier versions.
    request = server.requests[1]
    old_key = hashlib.blake2b(f"openai\0{server.openai_base}/chat/completions\0".encode(), digest_size=16)
    old_key.update(registration_of(con)._targets["chat"].identity)  # the headers' part of the key
    old_key.update(orjson.dumps(request.body, option=orjson.OPT_SORT_KEYS))
    _cache.open_cache(cache_dir / _cache.FILE_NAME).flush()
    with sqlite3.connect(cache_dir / _cache.FILE_NAME) as db:
        keys = {row[0] for row in db.execute("SELECT key FROM responses")}
    assert len(keys) == 2 and old_key.digest() in keys


@pytest.mark.slow
def test_cache_can_be_turned_off_per_call_per_endpoint_and_per_connection(endpoints, server):
    uncached = {**endpoints, "chat": {**endpoints["chat"], "cache": False}}
    with aiquery.connect(endpoints=uncached) as con:
        for _ in range(2):
            con.sql("SELECT ai_query('chat', 'sampled')").fetchall()
            con.sql("SELECT ai_query('chat', 'kept', cache => true)").fetchall()
    assert prompts(server).count("sampled") == 2 and prompts(server).count("kept") == 1
    with aiquery.connect(endpoints=endpoints) as con:
        for _ in range(2):
            con.sql("SELECT ai_query('chat', 'per call', cache => false)").fetchall()
    with aiquery.connect(endpoints=endpoints, cache=False) as con:
        for _ in range(2):
            con.sql("SELECT ai_query('chat', 'no cache at all')").fetchall()
    assert prompts(server).count("per call") == 2 and prompts(server).count("no cache at all") == 2


def test_failed_answers_are_not_cached(con, server):
    query = "SELECT ai_query('chat', 'bad [[status=400]]', failOnError => false).errorMessage"
    for _ in range(2):
        (error,), = con.sql(query).fetchall()
        assert "HTTP 400" in error
    assert len(server.requests) == 2


def test_the_file_holds_no_key_and_no_header(con, server, cache_dir):
    con.sql("SELECT ai_query('chat', 'row ' || i), ai_query('db-chat', 'x' || i) FROM range(10) t(i)").fetchall()
    _cache.close_all()
    stored = b"".join(p.read_bytes() for p in cache_dir.iterdir())
    assert b"row 3" in stored  # the answers are there
    assert CANARY_KEY.encode() not in stored and b"Bearer" not in stored and b"Authorization" not in stored


def test_cache_argument_must_be_a_boolean(con):
    with pytest.raises(duckdb.Error, match="cache must be true or false, got 'yes'"):
        con.sql("SELECT ai_query('chat', 'x', cache => 'yes')").fetchall()
    with pytest.raises(aiquery.ConfigError, match="endpoint 'chat': cache must be true or false"):
        aiquery.connect(endpoints={"chat": {"cache": "no"}})


@pytest.mark.slow  # 320 rows of 1 s, interrupted and run again
def test_con_interrupt_returns_at_once_and_a_rerun_sends_only_the_rest(endpoints, cache_dir):
    with FakeServer(api_key=CANARY_KEY, latency=1.0) as server:
        slow = {"chat": {**endpoints["chat"], "base_url": server.openai_base, "max_concurrency": 32}}
        rows = 320  # 320 x 1 s / 32 in flight: 10 s if it ran to the end
        query = f"CREATE OR REPLACE TABLE answers AS SELECT i, ai_query('chat', 'row ' || i) AS a FROM range({rows}) t(i)"
        with aiquery.connect(endpoints=slow) as con:
            timer = threading.Timer(2.5, con.interrupt)
            timer.start()
            with pytest.raises(duckdb.Error, match="(?i)interrupted"):  # ours, or DuckDB's between two calls
                con.execute(query)
            first = set(prompts(server))
            settle(aiquery.Engine.shared())  # what it still had in flight, cancelled
            assert set(prompts(server)) == first, "requests went on after the interrupt"
            # it returned at once: the requests in flight then were cancelled, not waited for (the
            # client hung up on them), and the query did not run to its end
            assert len(first) < rows
            wait_for(lambda: any(r.status == 0 and r.client_gone for r in server.requests),
                     what="the client to hang up on the requests in flight")
            wait_for(lambda: not any(t.name == "aiquery-prefetch" for t in threading.enumerate()),
                     what="the read-ahead threads to end")
            kept = cached_entries(cache_dir)
            assert 0 < kept <= len(first) < rows
            server.reset()
            con.execute(query)  # the connection is still usable, and resumes
            assert con.sql("SELECT count(*), count(a) FROM answers").fetchall() == [(rows, rows)]
        resent = set(prompts(server))
        assert len(resent) == rows - kept  # exactly the rows whose answer had not arrived
        assert resent | first == {f"row {i}" for i in range(rows)}


SCRIPT = textwrap.dedent("""
    import signal, sys, time
    import aiquery, duckdb
    # As in a terminal. A process started in the background of a non-interactive shell (`cmd &` in
    # a script) inherits SIGINT ignored; Python then installs no handler, and Ctrl-C does nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    con = aiquery.connect(endpoints={"chat": {"base_url": sys.argv[1], "model": "m", "max_concurrency": 32}})
    print("started", flush=True)
    t = time.monotonic()
    try:
        n = con.execute("SELECT count(a) FROM (SELECT ai_query('chat', 'row ' || i) AS a FROM range(320) t(i))").fetchall()
        print("finished", n, flush=True)
    except (KeyboardInterrupt, duckdb.Error, RuntimeError) as exc:
        # DuckDB reports Ctrl-C as "Query interrupted" (RuntimeError), or, when it lands inside
        # ai_query's call, as its own error naming the KeyboardInterrupt
        assert isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc) or "interrupted" in str(exc), exc
        print(f"interrupted after {time.monotonic() - t:.2f} s", flush=True)
        print(con.sql("SELECT 42").fetchall(), flush=True)  # still usable
""")


def _run_script(server, cache_dir, stop: signal.Signals | None):
    env = {**os.environ, "AIQUERY_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, server.openai_base], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "started"
    if stop is not None:
        wait_for(lambda: len(server.requests) >= 96, what="two rounds answered")
        proc.send_signal(stop)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
@pytest.mark.slow  # a subprocess, stopped and run again
def test_ctrl_c_or_a_kill_keeps_completed_answers_and_a_rerun_sends_the_rest(cache_dir, stop):
    with FakeServer(latency=1.0) as server:
        code, out, err = _run_script(server, cache_dir, stop)
        if stop == signal.SIGINT:
            assert code == 0 and "interrupted after" in out and "[(42,)]" in out, err
        else:
            assert code == -signal.SIGKILL
        first = set(prompts(server))
        with sqlite3.connect(cache_dir / _cache.FILE_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            kept = db.execute("SELECT count(*) FROM responses").fetchone()[0]
        assert 0 < kept <= len(first) < 320  # it stopped there: the rest was never sent
        server.reset()
        code, out, err = _run_script(server, cache_dir, None)
        assert code == 0 and "finished [(320,)]" in out, err
        assert len(prompts(server)) == 320 - kept


@pytest.mark.slow  # two subprocesses
def test_two_processes_sharing_one_cache_file_stay_correct(tmp_path):
    script = textwrap.dedent("""
        import sys
        import aiquery
        con = aiquery.connect(endpoints={"chat": {"base_url": sys.argv[1], "model": "m"}})
        start = int(sys.argv[2])
        rows = con.execute(f"SELECT i, ai_query('chat', 'row ' || i) FROM range({start}, {start} + 600) t(i)").fetchall()
        assert all(answer.endswith(f"row {i}") for i, answer in rows), rows[:3]
        print(len(rows))
    """)
    with FakeServer(latency=0.01) as server:
        env = {**os.environ, "AIQUERY_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen([sys.executable, "-c", script, server.openai_base, str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for start in (0, 300)]  # rows 300-599 overlap
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        with sqlite3.connect(tmp_path / _cache.FILE_NAME) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 900
        server.reset()
        with aiquery.connect(endpoints={"chat": {"base_url": server.openai_base, "model": "m"}},
                             cache=tmp_path / _cache.FILE_NAME) as con:
            rows = con.sql("SELECT i, ai_query('chat', 'row ' || i) FROM range(900) t(i)").fetchall()
        assert server.requests == [] and all(a.endswith(f"row {i}") for i, a in rows)


def test_the_cache_command_shows_and_clears(con, server, cache_dir, capsys):
    con.sql("SELECT ai_query('chat', 'row ' || i), ai_query('embed', 'text ' || i) FROM range(10) t(i)").fetchall()
    con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(4) t(i)").fetchall()  # 4 hits
    _cache.close_all()
    assert cli(["cache"]) == 0
    out = capsys.readouterr().out
    assert "20 answers, 4 hits" in out
    chat = next(line for line in out.splitlines() if line.startswith("chat "))
    assert "fake-chat" in chat and chat.split()[2] == "10" and chat.split()[-1] == "4"
    assert cli(["cache", "clear", "--endpoint", "embed"]) == 0
    assert "deleted 10 cached answers" in capsys.readouterr().out
    assert cli(["cache", "clear", "--older-than", "1h"]) == 0
    assert "deleted 0 cached answers" in capsys.readouterr().out
    assert cli(["cache", "clear"]) == 0
    assert "deleted 10 cached answers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["cache", "clear", "--older-than", "soon"])
