"""Batch mode against a fake batch API on 127.0.0.1 (tests/fakebatch.py): submit, poll, cache
filling, per-row errors, failed / expired / cancelled batches, resume after a kill, half price."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import duckdb
import pytest
from aiohttp import web

import aiquery
from aiquery import _cli
from conftest import CANARY_KEY
from fakebatch import FakeBatchServer
from fakeserver import openai_error
from hostile import gzip_bomb
from waiting import wait_for

POLL = 0.02  # seconds between polls: the fake's batches move on per poll, not per second


@pytest.fixture
def batch_server():
    with FakeBatchServer(api_key=CANARY_KEY) as s:
        yield s


@pytest.fixture
def batch_endpoints(batch_server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    common = {"base_url": batch_server.openai_base, "api_key_env": "FAKE_KEY", "batch_poll_interval": POLL}
    return {"chat": {**common, "model": "fake-chat", "batch": True},
            "online": {**common, "model": "fake-chat"},
            "embed": {**common, "task": "embeddings", "model": "fake-embed", "batch": True}}


@pytest.fixture
def engine():
    engine = aiquery.Engine()
    yield engine
    engine.close()


def batched_keys(server) -> list[str]:
    return [line["custom_id"] for batch in server.created for line in batch.lines]


def usage(con, endpoint="chat") -> dict:
    rel = con.sql(f"SELECT * FROM aiquery_usage() WHERE endpoint = '{endpoint}'")
    return dict(zip(rel.columns, rel.fetchall()[0]))


@pytest.mark.slow
def test_a_query_is_answered_through_one_batch_and_the_cache_answers_its_rerun(batch_endpoints, batch_server, engine):
    query = "SELECT i, ai_query('chat', 'row ' || i) AS a FROM range(3000) t(i) ORDER BY i"
    with aiquery.connect(endpoints=batch_endpoints, engine=engine) as con:
        rows = con.sql(query).fetchall()
        assert rows == [(i, f"echo: row {i}") for i in range(3000)]
        keys = batched_keys(batch_server)
        assert len(keys) == len(set(keys)) == 3000  # every row in a batch once, none sent twice
        assert batch_server.online_requests() == []
        # The read-ahead gathers the query's rows: a few batches at most, not one per DuckDB call of 2048.
        assert 1 <= len(batch_server.created) <= 2
        line = batch_server.created[0].lines[0]
        assert line["url"] == "/v1/chat/completions" and line["body"]["model"] == "fake-chat"
        figures = usage(con)
        assert (figures["batched"], figures["answered"], figures["requests"]) == (3000, 3000, 0)
        assert con.sql(query).fetchall() == rows  # the re-run: all from the response cache
        assert len(batch_server.created) in (1, 2) and batched_keys(batch_server) == keys
        assert usage(con)["cache_hits"] == 3000


@pytest.mark.slow
def test_per_row_errors_are_row_errors_or_the_query_error(batch_endpoints, batch_server, engine):
    with aiquery.connect(endpoints=batch_endpoints, engine=engine) as con:
        rows = con.sql("SELECT i, ai_query('chat', 'row ' || i || CASE WHEN i % 3 = 0 THEN ' [[status=400]]' ELSE '' "
                       "END, failOnError => false) AS r FROM range(9) t(i) ORDER BY i").fetchall()
        batch_id = batch_server.created[0].id
        for i, r in rows:
            if i % 3 == 0:
                assert r["response"] is None
                assert r["errorMessage"] == (f"endpoint 'chat': batch {batch_id}: HTTP 400 for this row: "
                                             "fake error 400")
            else:
                assert r == {"response": f"echo: row {i}", "errorMessage": None}
        assert usage(con)["errors"] == 3 and usage(con)["error_kinds"] == {"http_400": 3}
        with pytest.raises(duckdb.Error, match=r"batch batch_2: HTTP 400 for this row: fake error 400"):
            con.sql("SELECT ai_query('chat', 'again ' || i || ' [[status=400]]') FROM range(3) t(i)").fetchall()
        assert batch_server.online_requests() == []


@pytest.mark.slow
def test_answers_are_priced_at_the_batch_rate_with_cached_tokens(batch_endpoints, batch_server, engine, tmp_path):
    config = tmp_path / "aiquery.toml"
    price = 'input = 2.0\noutput = 8.0\ncached_input = 0.5\nbatch = 0.5\n'
    config.write_text(f'[prices."fake-chat"]\n{price}[prices."fake-chat-2"]\n{price}')
    prompt = "'row ' || i || ' [[tokens=1000,100]] [[cached=400]]'"
    # usage is kept per URL and model: the online endpoint gets a model of its own
    endpoints = {**batch_endpoints, "online": {**batch_endpoints["online"], "model": "fake-chat-2"}}
    with aiquery.connect(endpoints=endpoints, config=config, engine=engine) as con:
        details = con.sql(f"SELECT ai_query('chat', {prompt}, failOnError => false, details => true).details "
                          "FROM range(4) t(i)").fetchall()
        assert all(d["cached_tokens"] == 400 and d["batch_id"] == "batch_1" for (d,) in details)
        con.sql(f"SELECT ai_query('online', {prompt}) FROM range(4) t(i)").fetchall()
        batch, online = usage(con, "chat"), usage(con, "online")
    full = 4 * (600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6
    assert online["cost_usd"] == pytest.approx(full) and online["cached_tokens"] == 1600
    assert batch["cost_usd"] == pytest.approx(full / 2) and batch["cached_tokens"] == 1600
    assert len(batch_server.online_requests()) == 4  # only the 'online' endpoint's rows


@pytest.mark.slow
def test_batch_true_per_call_and_where_there_is_no_batch_api(batch_endpoints, batch_server, engine):
    with aiquery.connect(endpoints=batch_endpoints, engine=engine) as con:
        assert con.sql("SELECT ai_query('online', 'x ' || i, batch => true) FROM range(3) t(i)").fetchall() == [
            ("echo: x 0",), ("echo: x 1",), ("echo: x 2",)]
        assert len(batch_server.created) == 1 and batch_server.online_requests() == []
        assert con.sql("SELECT ai_query('chat', 'y', batch => false)").fetchall() == [("echo: y",)]
        assert len(batch_server.online_requests()) == 1 and len(batch_server.created) == 1
        with pytest.raises(duckdb.Error, match="endpoint 'local-chat' .* has no batch API"):
            con.sql("SELECT ai_query('local-chat', 'z', batch => true)").fetchall()
        with pytest.raises(duckdb.Error, match="batch must be true or false"):
            con.sql("SELECT ai_query('chat', 'z', batch => 'yes')").fetchall()
    with pytest.raises(aiquery.ConfigError, match="batch = true needs an OpenAI-compatible provider"):
        aiquery.connect(endpoints={"db": {"provider": "databricks", "model": "m", "batch": True}})


@pytest.mark.slow
@pytest.mark.parametrize("task, path", [("embeddings", "/v1/embeddings"), ("completions", "/v1/completions")])
def test_embeddings_and_completions_in_batch_mode(task, path, batch_endpoints, batch_server, engine):
    endpoint = {**batch_endpoints["embed"], "task": task, "model": f"fake-{task}"}
    with aiquery.connect(endpoints={"e": endpoint}, engine=engine) as con:
        batched = con.sql("SELECT ai_query('e', 'text ' || i) FROM range(5) t(i) ORDER BY i").fetchall()
    with aiquery.connect(endpoints={"e": {**endpoint, "batch": False}}, engine=engine, cache=False) as con:
        online = con.sql("SELECT ai_query('e', 'text ' || i) FROM range(5) t(i) ORDER BY i").fetchall()
    assert batched == online  # the same answers either way; online, embedding texts share a request
    assert len(batch_server.online_requests()) == (1 if task == "embeddings" else 5)
    assert batch_server.created[0].endpoint == path and len(batch_server.created[0].lines) == 5
    assert len(batched[0][0]) == 8 if task == "embeddings" else batched[0][0] == "completion: text 0"


@pytest.mark.slow
def test_rows_are_split_into_files_within_the_limits(batch_endpoints, batch_server, engine):
    limited = {**batch_endpoints, "chat": {**batch_endpoints["chat"], "batch_max_requests": 40}}
    with aiquery.connect(endpoints=limited, engine=engine) as con:
        assert len(con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(100) t(i)").fetchall()) == 100
    sizes = sorted(len(b.lines) for b in batch_server.created)
    assert max(sizes) <= 40 and sum(sizes) == 100 and len(set(batched_keys(batch_server))) == 100
    by_bytes = {**batch_endpoints, "chat": {**batch_endpoints["chat"], "batch_max_bytes": 2_000}}
    with aiquery.connect(endpoints=by_bytes, engine=engine) as con:
        con.sql("SELECT ai_query('chat', 'other row ' || i) FROM range(30) t(i)").fetchall()
    files = [batch_server.files[b.input_file_id] for b in batch_server.created[len(sizes):]]
    assert len(files) > 1 and all(len(f) <= 2_000 for f in files) and sum(f.count(b"\n") for f in files) == 30


def test_a_failed_batch_fails_its_rows_with_the_providers_reason(batch_endpoints, engine):
    with FakeBatchServer(max_requests=3) as server:
        endpoints = {"chat": {"base_url": server.openai_base, "model": "m", "batch": True, "batch_poll_interval": POLL}}
        with aiquery.connect(endpoints=endpoints, engine=engine) as con:
            rows = con.sql("SELECT ai_query('chat', 'row ' || i, failOnError => false).errorMessage "
                           "FROM range(5) t(i)").fetchall()
    assert rows == [("endpoint 'chat': batch batch_1 failed: The batch has 5 requests, the limit is 3.",)] * 5


@pytest.mark.slow
def test_an_expired_batch_answers_the_rows_done_and_fails_the_rest(batch_endpoints, engine):
    with FakeBatchServer(rows_per_poll=2) as server:
        endpoints = {"chat": {"base_url": server.openai_base, "model": "m", "batch": True, "batch_poll_interval": POLL}}
        with aiquery.connect(endpoints=endpoints, engine=engine) as con:
            result = {}
            thread = threading.Thread(target=lambda: result.setdefault("rows", con.sql(
                "SELECT i, ai_query('chat', 'row ' || i, failOnError => false) AS r FROM range(5) t(i) ORDER BY i"
            ).fetchall()))
            server.hold = True
            thread.start()
            wait_for(lambda: server.created and server.created[0].status == "in_progress")
            with server._lock:  # exactly two rows done, then the window closes
                batch = server.created[0]
                batch.done = [server._answer(line, batch.endpoint) for line in batch.lines[:2]]
            server.expire(batch.id)
            thread.join(timeout=30)
    rows = result["rows"]
    answered = [i for i, r in rows if r["response"] is not None]
    errors = {r["errorMessage"] for i, r in rows if r["response"] is None}
    assert len(answered) == 2 and errors == {
        "endpoint 'chat': batch batch_1: no answer for this row (batch_expired): This request could not be "
        "executed before the completion window expired."}


def cli(*args) -> tuple[int, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = _cli.main(list(args))
    return code, out.getvalue()


@pytest.mark.slow
def test_an_interrupted_query_leaves_its_batch_running_and_a_rerun_resumes_it(batch_endpoints, batch_server, engine,
                                                                                tmp_path, monkeypatch):
    config = tmp_path / "aiquery.toml"
    config.write_text("".join(f'[endpoints.{name}]\n' + "".join(
        f'{k} = {v!r}\n'.replace("True", "true").replace("False", "false").replace("'", '"') for k, v in s.items())
        for name, s in batch_endpoints.items()) + '[prices."fake-chat"]\ninput = 2.0\noutput = 8.0\nbatch = 0.5\n')
    query = "SELECT i, ai_query('chat', 'row ' || i) FROM range(50) t(i) ORDER BY i"
    batch_server.hold = True
    with aiquery.connect(config=config, engine=engine) as con:
        failure = {}

        def run():
            try:
                con.sql(query).fetchall()
            except duckdb.Error as exc:
                failure["error"] = str(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_for(lambda: batch_server.polls() >= 2)
        con.interrupt()
        thread.join(timeout=30)
        assert "interrupted" in failure["error"].lower()
        code, listing = cli("batches", "--config", str(config))
        assert code == 0 and "batch_1" in listing and "in_progress (pending)" in listing and "0/50" in listing
        batch_server.release()
        listings = []

        def listed_completed():  # each listing polls the provider: the batch moves on until it is done
            listings.append(cli("batches", "--config", str(config))[1])
            return "completed" in listings[-1]

        wait_for(listed_completed)
        assert "50/50" in listings[-1] and "batch_1" in listings[-1]
        rows = con.sql(query).fetchall()  # resumes the batch: collects its results, sends nothing again
        assert rows == [(i, f"echo: row {i}") for i in range(50)]
    assert len(batch_server.created) == 1 and len(batch_server.uploads) == 1 and batch_server.online_requests() == []
    code, listing = cli("batches", "--config", str(config))
    assert "no pending batches" in listing
    code, listing = cli("batches", "--all", "--config", str(config))
    cost = 50 * (2 * 2.0 + 3 * 8.0) / 1e6 * 0.5  # 'row N' is 2 words (tokens), 'echo: row N' 3
    assert "completed" in listing and f"{cost:,.4f}" in listing


@pytest.mark.slow
def test_cancel_from_the_cli_fails_the_rows_not_done(batch_endpoints, batch_server, engine, tmp_path):
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{batch_server.openai_base}"\nmodel = "fake-chat"\n'
                      f'api_key_env = "FAKE_KEY"\nbatch = true\nbatch_poll_interval = {POLL}\n')
    batch_server.hold = True
    with aiquery.connect(config=config, engine=engine) as con:
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("rows", con.sql(
            "SELECT ai_query('chat', 'row ' || i, failOnError => false).errorMessage FROM range(4) t(i)").fetchall()))
        thread.start()
        wait_for(lambda: batch_server.polls() >= 2)
        code, out = cli("batches", "cancel", "batch_1", "--config", str(config))
        assert code == 0 and "cancelling batch_1" in out
        thread.join(timeout=30)
    assert result["rows"] == [("endpoint 'chat': batch batch_1: no answer for this row (batch_cancelled): "
                               "This request was cancelled.",)] * 4
    with pytest.raises(SystemExit, match="aiquery batches cancel: no submitted batch 'batch_9' in "):
        cli("batches", "cancel", "batch_9", "--config", str(config))


@pytest.mark.slow
def test_a_batch_past_batch_max_wait_fails_the_query_and_runs_on(batch_endpoints, batch_server, engine):
    waiting = {**batch_endpoints, "chat": {**batch_endpoints["chat"], "batch_max_wait": 0.2}}
    batch_server.hold = True
    with aiquery.connect(endpoints=waiting, engine=engine) as con:
        # validating or in_progress: how many polls fit in 0.2 s depends on how busy the machine is
        with pytest.raises(duckdb.Error, match=r"batch batch_1 is still (validating|in_progress) after "
                                               r"batch_max_wait = 0.2 s\. It goes on at the provider"):
            con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(10) t(i)").fetchall()
        batch_server.release()
        rows = con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(10) t(i)").fetchall()
    assert len(rows) == 10 and len(batch_server.created) == 1 and batch_server.online_requests() == []


RUNNER = textwrap.dedent("""
    import sys
    import aiquery
    endpoints = {"chat": {"base_url": sys.argv[1], "model": "fake-chat", "api_key_env": "FAKE_KEY",
                          "batch": True, "batch_poll_interval": 0.02}}
    con = aiquery.connect(endpoints=endpoints)
    rows = con.sql("SELECT i, ai_query('chat', 'row ' || i) FROM range(200) t(i) ORDER BY i").fetchall()
    print(len(rows), rows[-1][1])
""")


def run_runner(server, cache_dir, **popen):
    env = {**os.environ, "AIQUERY_CACHE_DIR": str(cache_dir), "FAKE_KEY": CANARY_KEY}
    return subprocess.Popen([sys.executable, "-c", RUNNER, server.openai_base], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finish(process) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


@pytest.mark.parametrize("killed", ["polling", "creating"])
@pytest.mark.slow  # a subprocess per run, killed and run again
def test_a_killed_process_resumes_its_batch_instead_of_paying_again(killed, cache_dir):
    # polling: killed while it waits for a running batch; creating: killed after the provider created
    # the batch but before its answer arrived (so the batch's id was never recorded).
    with FakeBatchServer(api_key=CANARY_KEY, create_delay=30 if killed == "creating" else 0) as server:
        server.hold = True
        process = run_runner(server, cache_dir)
        if killed == "polling":
            wait_for(lambda: server.polls() >= 3)
        else:
            wait_for(lambda: len(server.created) == 1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        server.release()
        server.create_delay = 0
        assert finish(run_runner(server, cache_dir)) == "200 echo: row 199\n"
        assert len(server.created) == 1 and len(server.uploads) == 1
        assert server.online_requests() == []
        assert finish(run_runner(server, cache_dir)) == "200 echo: row 199\n"  # from the response cache
        assert len(server.created) == 1 and server.polls() > 0
        polls = server.polls()
        finish(run_runner(server, cache_dir))
        assert server.polls() == polls  # collected: never polled again
    store = Path(cache_dir) / "batches.sqlite3"
    assert store.is_file() and CANARY_KEY.encode() not in store.read_bytes()
    assert all(CANARY_KEY.encode() not in content for content in server.files.values())


QUERY_KEY = "qk-gateway-7f3a9c21e5"  # a gateway's key in the base_url's query string


class EchoingBatchServer(FakeBatchServer):
    """A batch API that puts the credentials it received (the Authorization header and the URL's
    query string) in one place of its answers, as a careless server or proxy might."""

    def __init__(self, where: str, **options) -> None:
        super().__init__(**options)
        self.where, self.heard, self.queries = where, "", []

    async def _route(self, request, record):
        if record.path.startswith(("/v1/files", "/v1/batches")):
            self.queries.append(request.query_string)
        self.heard = f"{request.headers.get('Authorization', '')} {request.query_string}"
        if self.where == "upload error" and record.path == "/v1/files" and request.method == "POST":
            return openai_error(400, f"upload refused for {self.heard}")
        return await super()._route(request, record)

    def _validate(self, batch):
        if self.where == "batch failure":
            return {"code": "invalid_auth", "message": f"\x1b]0;pwned\x07refused {self.heard}", "line": None}
        return super()._validate(batch)

    def _answer(self, line, endpoint):
        answer = super()._answer(line, endpoint)
        if self.where == "row error":
            answer["response"] = {"status_code": 400, "request_id": "r",
                                  "body": {"error": {"message": f"bad row, {self.heard}"}}}
        elif self.where == "answer":
            answer["response"]["body"]["choices"][0]["message"]["content"] = f"hello {self.heard}"
        return answer


@pytest.mark.parametrize("where", ["upload error", "batch failure", "row error", "answer"])
def test_credentials_a_batch_api_echoes_are_redacted_from_errors_rows_and_stores(where, engine, tmp_path,
                                                                               monkeypatch, caplog):
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    caplog.set_level(logging.DEBUG)  # every logger, every level: httpx logs each URL at INFO
    with EchoingBatchServer(where, api_key=CANARY_KEY) as server:
        endpoints = {"chat": {"base_url": f"{server.openai_base}?api_key={QUERY_KEY}&api-version=2024-06-01",
                              "api_key_env": "FAKE_KEY", "model": "fake-chat", "batch": True,
                              "batch_poll_interval": POLL}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=tmp_path / "responses.sqlite3") as con:
            query = "SELECT ai_query('chat', 'row ' || i, failOnError => false) AS r FROM range(3) t(i)"
            rows = str(con.sql(query).fetchall())
            again = "SELECT ai_query('chat', 'again ' || i) FROM range(3) t(i)"  # failOnError => true
            if where == "answer":
                failure = str(con.sql(again).fetchall())
            else:
                with pytest.raises(duckdb.Error, match="endpoint 'chat'") as raised:
                    con.sql(again).fetchall()
                failure = str(raised.value)
        assert all(q == f"api_key={QUERY_KEY}&api-version=2024-06-01" for q in server.queries) and server.queries
        if where == "answer":
            assert rows.count("hello Bearer [REDACTED] api_key=[REDACTED]") == 3, rows
        else:
            assert rows.count("[REDACTED]") >= 3, rows
        if where == "batch failure":
            assert "\x1b" not in rows and "refused Bearer [REDACTED]" in rows
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert "?api_key=[REDACTED]&api-version=2024-06-01" in caplog.text
    for place, text in [("rows", rows), ("the error", failure), ("the stores", stored.decode("latin-1")),
                        ("the logs", caplog.text)]:
        assert CANARY_KEY not in text and QUERY_KEY not in text, f"a key leaked into {place}"


class ManyHeadersBatchServer(FakeBatchServer):
    """A batch API whose file upload answers with 200 header lines (2 KB: h11 accepts them)."""

    async def _route(self, request, record):
        response = await super()._route(request, record)
        if record.path == "/v1/files" and response is not None:
            for i in range(200):
                response.headers[f"X-H-{i}"] = "v"
        return response


def test_a_batch_api_answer_with_too_many_headers_fails_its_rows(engine):
    with ManyHeadersBatchServer() as server:
        endpoints = {"chat": {"base_url": server.openai_base, "model": "fake-chat", "batch": True,
                              "batch_poll_interval": POLL, "max_attempts": 1}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
            rows = con.sql("SELECT ai_query('chat', 'row ' || i, failOnError => false).errorMessage "
                           "FROM range(2) t(i)").fetchall()
        assert server.created == []  # nothing was paid for
    assert all("request failed to" in r and "more than 128" in r for (r,) in rows), rows


async def _trickle(request):
    """200 with a Content-Length it never reaches: a byte every 0.1 s."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 1_000_000
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client hangs up
        for _ in range(600):
            await response.write(b" ")
            await asyncio.sleep(0.1)
    return response


async def _never_answers(request):
    await asyncio.sleep(60)


async def _bomb(request):
    """A gzip body of 64 MiB of spaces, 64 KB on the wire."""
    return web.Response(body=gzip_bomb(64 << 20), headers={"Content-Type": "application/json",
                                                           "Content-Encoding": "gzip"})


async def _endless(request):
    """A chunked body that never ends, as fast as it can go."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client hangs up
        for _ in range(10_000):
            await response.write(b" " * (64 << 10))
    return response


class FaultyBatchServer(FakeBatchServer):
    """A batch API where one route (`where`) answers with `fault` instead: the file upload, a poll
    of the batch, or the download of its output file."""

    def __init__(self, where: str, fault, **options) -> None:
        super().__init__(**options)
        self.where, self.fault = where, fault

    def _faulty(self, request, record) -> bool:
        if self.where == "upload":
            return record.path == "/v1/files" and request.method == "POST"
        if self.where == "poll":
            return record.path.startswith("/v1/batches/") and request.method == "GET"
        if self.where == "output file":
            outputs = {b.output_file_id for b in self.batches.values()}
            return record.path.endswith("/content") and record.path.split("/")[3] in outputs
        return False

    async def _route(self, request, record):
        if self._faulty(request, record):
            return await self.fault(request)
        return await super()._route(request, record)


BATCH_FAULTS = {"trickle": (_trickle, "no complete answer from"), "never-answers": (_never_answers, "within 1 s"),
                "bomb": (_bomb, "decompresses to more than"), "endless": (_endless, "is larger than")}


@pytest.mark.parametrize("where", ["upload", "poll", "output file"])
@pytest.mark.parametrize("fault", list(BATCH_FAULTS))
def test_a_batch_api_answer_that_never_ends_or_never_fits_fails_its_rows(where, fault, engine):
    """The batch API's answers are read as the online ones are: within the timeout (a batch file
    gets more time only while its bytes keep coming) and within max_response_bytes, raw and
    decompressed (a batch file: that for each of its requests)."""
    respond, says = BATCH_FAULTS[fault]
    with FaultyBatchServer(where, respond) as server:
        endpoints = {"chat": {"base_url": server.openai_base, "model": "fake-chat", "batch": True, "timeout": 1,
                              "batch_poll_interval": POLL, "max_attempts": 1, "max_response_bytes": 1 << 20}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
            rows = con.sql("SELECT ai_query('chat', 'row ' || i, failOnError => false).errorMessage "
                           "FROM range(2) t(i)").fetchall()
            limit = "2,097,152 bytes (max_response_bytes for each" if where == "output file" else "(1,048,576 bytes)"
            for (message,) in rows:
                assert message.startswith("endpoint 'chat': ") and says in message, rows
                assert fault in ("trickle", "never-answers") or limit in message, rows
            assert len(server.created) == (0 if where == "upload" else 1)
            # the endpoint still works: the next answers come whole
            server.where = "nowhere"
            assert con.sql("SELECT ai_query('chat', 'again')").fetchall() == [("echo: again",)]


def test_a_batch_file_may_hold_more_than_max_response_bytes_within_each_answer(batch_endpoints, batch_server,
                                                                               engine):
    """Four answers of 400 KB: a 1.6 MB output file, above a 1 MiB max_response_bytes that each fits."""
    endpoints = {"chat": {**batch_endpoints["chat"], "max_response_bytes": 1 << 20}}
    with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
        rows = con.sql("SELECT length(ai_query('chat', '[[reply=' || repeat(chr(97 + i::INTEGER), 400000) || ']]')) "
                       "FROM range(4) t(i)").fetchall()
    assert rows == [(400000,)] * 4 and len(batch_server.created) == 1


class SlowLinkBatchServer(FakeBatchServer):
    """Serves output files in 64 KiB pieces 0.02 s apart (at most 3.2 MB/s), as a slow link would."""

    async def _route(self, request, record):
        response = await super()._route(request, record)
        if not record.path.endswith("/content") or request.method != "GET":
            return response
        paced = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        paced.content_length = len(response.body)
        await paced.prepare(request)
        for start in range(0, len(response.body), 64 << 10):
            await paced.write(response.body[start:start + (64 << 10)])
            await asyncio.sleep(0.02)
        return paced


def test_a_batch_file_that_keeps_coming_is_read_past_the_timeout(monkeypatch, engine):
    """A 4 MB output file takes at least 1.3 s at that pace, past a 1 s timeout: the timeout is
    stretched while bytes keep arriving (a second per 256 KiB), as a large file on a slow link needs."""
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    with SlowLinkBatchServer(api_key=CANARY_KEY) as server:
        endpoints = {"chat": {"base_url": server.openai_base, "api_key_env": "FAKE_KEY", "model": "fake-chat",
                              "batch": True, "batch_poll_interval": POLL, "timeout": 1, "max_attempts": 1}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
            rows = con.sql("SELECT length(ai_query('chat', '[[reply=' || repeat(chr(97 + i::INTEGER), 1000000) "
                           "|| ']]')) FROM range(4) t(i)").fetchall()
    assert rows == [(1000000,)] * 4
    downloads = [r for r in server.requests if r.method == "GET" and r.path.endswith("/content")]
    assert len(downloads) == 1  # read once, not retried after a timeout


def test_a_recorded_batch_the_provider_does_not_know_fails_once_then_its_rows_go_in_a_new_batch(
        batch_endpoints, batch_server, engine, tmp_path):
    """The batch was left running (batch_max_wait), then deleted at the provider: the re-run says
    so and marks it missing; the next run sends the rows again, in one new batch."""
    endpoints = {"chat": {**batch_endpoints["chat"], "batch_max_wait": 0.2}}
    query = "SELECT ai_query('chat', 'row ' || i) FROM range(3) t(i) ORDER BY 1"
    batch_server.hold = True
    with aiquery.connect(endpoints=endpoints, engine=engine, cache=tmp_path / "responses.sqlite3") as con:
        with pytest.raises(duckdb.Error, match="still in_progress after batch_max_wait"):
            con.sql(query).fetchall()
        batch_server.batches.clear()  # deleted at the provider
        batch_server.hold = False
        with pytest.raises(duckdb.Error) as raised:
            con.sql(query).fetchall()
        assert ("endpoint 'chat': batch batch_1, which batches.sqlite3 holds these rows in, is unknown to the "
                "provider (HTTP 404") in str(raised.value)
        assert "running the statement again sends its rows in a new batch" in str(raised.value)
        assert "No batch found with id 'batch_1'. Check base_url" in str(raised.value)  # one full stop, not two
        assert con.sql(query).fetchall() == [(f"echo: row {i}",) for i in range(3)]
    assert len(batch_server.created) == 2 and batch_server.online_requests() == []
