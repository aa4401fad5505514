"""What keys the response cache: everything that can change an answer, and never the API key itself.

A gateway (like LiteLLM, Portkey or an API manager) answers per route and per user: it routes by header
or by query string, and bills by key. Its answers here say which route served which user, so a row that
came from the wrong cache entry shows at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import aiquery
from aiquery import _cache
from conftest import CANARY_KEY

USERS = {"key-of-alice": "alice", "key-of-bob": "bob", "rotated-key-of-alice": "alice", CANARY_KEY: "carol"}


class Gateway:
    """An OpenAI-compatible chat gateway on 127.0.0.1: route from the x-route header or the `route`
    query parameter, user from the key; it answers '<route> for <user>: <prompt>' and records every
    request as (path, query, headers)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                headers = {k.lower(): v for k, v in self.headers.items()}
                gateway.requests.append((url.path, query, headers))
                user = USERS.get(headers.get("authorization", "").removeprefix("Bearer "))
                if not url.path.endswith("/chat/completions"):
                    self._answer(404, {"error": {"message": f"no route {url.path}"}})
                elif user is None:
                    self._answer(401, {"error": {"message": "unknown key"}})
                else:
                    route = headers.get("x-route") or query.get("route", ["default"])[0]
                    text = f"{route} for {user}: {body['messages'][-1]['content']}"
                    self._answer(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": text}}],
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Gateway:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def gateway(monkeypatch):
    monkeypatch.setenv("KEY_ALICE", "key-of-alice")
    monkeypatch.setenv("KEY_BOB", "key-of-bob")
    with Gateway() as g:
        yield g


def endpoint(gateway: Gateway, **settings) -> dict:
    return {"base_url": gateway.base, "model": "m", "api_key_env": "KEY_ALICE", **settings}


def rerun_from_the_file(endpoints: dict, sql: str) -> list[tuple]:
    """The rows of `sql` from a new connection and engine (no request an earlier query still holds can
    answer), after the process's cache was written and closed."""
    _cache.close_all()
    with contextlib.closing(aiquery.Engine()) as engine, aiquery.connect(endpoints=endpoints, engine=engine) as con:
        return con.sql(sql).fetchall()


@pytest.mark.slow
def test_endpoints_that_differ_only_in_a_routing_header_get_their_own_answers(gateway):
    endpoints = {"eu": endpoint(gateway, headers={"x-route": "eu"}), "us": endpoint(gateway, headers={"X-Route": "us"})}
    sql = "SELECT ai_query('eu', 'hi'), ai_query('us', 'hi')"
    with aiquery.connect(endpoints=endpoints) as con:
        assert con.sql(sql).fetchall() == [("eu for alice: hi", "us for alice: hi")]
    assert len(gateway.requests) == 2
    assert rerun_from_the_file(endpoints, sql) == [("eu for alice: hi", "us for alice: hi")]
    assert len(gateway.requests) == 2  # both answers came from the file, each to its own endpoint


@pytest.mark.slow
def test_two_users_keys_through_one_gateway_never_share_answers(gateway):
    alice, bob = endpoint(gateway), endpoint(gateway, api_key_env="KEY_BOB")
    sql = "SELECT ai_query('assistant', 'my balance?')"
    with aiquery.connect(endpoints={"assistant": alice}) as con:
        assert con.sql(sql).fetchall() == [("default for alice: my balance?",)]
    _cache.close_all()
    with aiquery.connect(endpoints={"assistant": bob}) as con:  # same name, URL, model and prompt
        assert con.sql(sql).fetchall() == [("default for bob: my balance?",)]
    with aiquery.connect(endpoints={"alice": alice, "bob": bob}) as con:  # both in one query
        assert con.sql("SELECT ai_query('alice', 'x'), ai_query('bob', 'x')").fetchall() == \
            [("default for alice: x", "default for bob: x")]
    assert len(gateway.requests) == 4
    assert rerun_from_the_file({"assistant": bob}, sql) == [("default for bob: my balance?",)]
    assert len(gateway.requests) == 4


@pytest.mark.slow
def test_endpoints_that_differ_only_in_the_base_url_query_string_get_their_own_answers(gateway):
    endpoints = {"eu": endpoint(gateway, base_url=gateway.base + "?route=eu"),
                 "us": endpoint(gateway, base_url=gateway.base + "/?route=us")}
    sql = "SELECT ai_query('eu', 'hi'), ai_query('us', 'hi')"
    with aiquery.connect(endpoints=endpoints) as con:
        assert con.sql(sql).fetchall() == [("eu for alice: hi", "us for alice: hi")]
    # the two calls' requests go out together: either may arrive first
    assert sorted((path, query.get("route")) for path, query, _ in gateway.requests) == \
        [("/v1/chat/completions", ["eu"]), ("/v1/chat/completions", ["us"])]
    assert rerun_from_the_file(endpoints, sql) == [("eu for alice: hi", "us for alice: hi")]
    assert len(gateway.requests) == 2


def test_the_same_endpoint_under_two_names_shares_its_answers(gateway):
    endpoints = {"chat": endpoint(gateway), "assistant": endpoint(gateway, max_concurrency=4)}  # limits change no answer
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(5) t(i)").fetchall()
    assert rerun_from_the_file(endpoints, "SELECT ai_query('assistant', 'row ' || i) FROM range(5) t(i)") == \
        [(f"default for alice: row {i}",) for i in range(5)]
    assert len(gateway.requests) == 5


@pytest.mark.slow
def test_a_rotated_key_misses_the_cache(gateway, monkeypatch):
    endpoints = {"chat": endpoint(gateway)}
    sql = "SELECT ai_query('chat', 'hi')"
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql(sql).fetchall()
    monkeypatch.setenv("KEY_ALICE", "rotated-key-of-alice")  # the same user to the gateway, another key to us
    assert rerun_from_the_file(endpoints, sql) == [("default for alice: hi",)]
    assert len(gateway.requests) == 2
    assert gateway.requests[1][2]["authorization"] == "Bearer rotated-key-of-alice"


@pytest.mark.slow
def test_the_file_holds_neither_the_key_nor_a_hash_of_it(gateway, monkeypatch, cache_dir):
    monkeypatch.setenv("CANARY", CANARY_KEY)
    endpoints = {"chat": endpoint(gateway, api_key_env="CANARY", headers={"x-route": "eu"})}
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(20) t(i)").fetchall()
        _cache.open_cache().flush()
        stored = b"".join(p.read_bytes() for p in Path(cache_dir).iterdir())  # main file, -wal and -shm
    assert b"eu for carol: row 7" in stored
    secret = CANARY_KEY.encode()
    for value in (secret, b"Bearer " + secret):
        for digest in (hashlib.sha256(value), hashlib.sha1(value), hashlib.md5(value), hashlib.blake2b(value),
                       hashlib.blake2b(value, digest_size=16)):
            assert digest.digest() not in stored and digest.hexdigest().encode() not in stored
        assert value not in stored
    with sqlite3.connect(cache_dir / _cache.FILE_NAME) as db:
        assert {row[0] for row in db.execute("SELECT length(key) FROM responses")} == {16}
