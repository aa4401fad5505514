"""Secrets and egress: where requests may go, TLS, and the canary key in every place a user can see."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest
from aiohttp import web

import aiquery
from aiquery import _cache
from conftest import CANARY_KEY
from fakeserver import FakeServer

ROOT = Path(__file__).resolve().parent.parent


def test_allowed_hosts_refuse_other_hosts_before_sending(endpoints, server, tmp_path, monkeypatch):
    monkeypatch.setenv("AIQUERY_ALLOWED_HOSTS", "api.openai.com, *.cloud.databricks.com")
    with aiquery.connect(endpoints=endpoints) as con:
        with pytest.raises(duckdb.Error, match=r"endpoint 'chat': host '127.0.0.1' is not in allowed_hosts "
                                               r"\(api.openai.com, \*.cloud.databricks.com\)"):
            con.sql("SELECT ai_query('chat', 'hi')").fetchall()
        assert con.sql("SELECT ai_query('local-chat', NULL)").fetchall() == [(None,)]  # no network: never refused
    assert server.requests == []
    monkeypatch.delenv("AIQUERY_ALLOWED_HOSTS")
    config = tmp_path / "aiquery.toml"
    config.write_text('allowed_hosts = ["127.0.0.*"]\n')
    with aiquery.connect(endpoints=endpoints, config=config) as con:
        assert con.sql("SELECT ai_query('chat', 'hi')").fetchall() == [("echo: hi",)]
    config.write_text('allowed_hosts = "127.0.0.1"\n')
    with pytest.raises(aiquery.ConfigError, match="allowed_hosts must be a list of host patterns"):
        aiquery.connect(endpoints=endpoints, config=config)


def test_nothing_in_the_data_chooses_where_requests_go(con, server):
    with pytest.raises(duckdb.Error, match="must be a constant"):
        con.sql("SELECT ai_query(e, 'x') FROM (VALUES ('chat')) t(e)").fetchall()
    rows = con.sql("SELECT ai_query('chat', 'x', modelParameters => {'base_url': 'http://evil.example/v1'})").fetchall()
    assert rows == [("echo: x",)] and len(server.requests) == 1  # a body field like any other, not a URL
    assert server.requests[0].body["base_url"] == "http://evil.example/v1"


def test_a_key_goes_only_to_its_own_host(endpoints, monkeypatch):
    with FakeServer() as elsewhere, FakeServer(api_key=CANARY_KEY) as own:
        monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
        settings = {"chat": {"base_url": own.openai_base, "model": "m", "api_key_env": "FAKE_KEY"}}
        with aiquery.connect(endpoints=settings) as con:
            target = f"{elsewhere.openai_base}/chat/completions"
            (error,), = con.sql(f"SELECT ai_query('chat', 'x [[redirect={target}]]', failOnError => false)"
                                ".errorMessage").fetchall()
        assert "not followed" in error and CANARY_KEY not in error
        assert elsewhere.requests == []
        assert own.requests[0].headers["authorization"] == f"Bearer {CANARY_KEY}"


def _tls_server(certificate) -> tuple[str, callable]:
    """A minimal OpenAI-compatible HTTPS server on 127.0.0.1 with a certificate from a test CA."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"choices": [{"message": {"role": "assistant",
                                                           "content": "tls: " + body["messages"][-1]["content"]},
                                               "finish_reason": "stop"}]})

    ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certificate.configure_cert(ssl_context)
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock, ssl_context=ssl_context).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop():
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return f"https://127.0.0.1:{port}/v1", stop


@pytest.mark.slow
def test_tls_is_verified_by_default_and_a_private_ca_is_trusted_through_ssl_cert_file(tmp_path):
    trustme = pytest.importorskip("trustme", reason="needs the test extra: pip install -e '.[test]'")
    ca = trustme.CA()
    base_url, stop = _tls_server(ca.issue_cert("127.0.0.1"))
    try:
        query = "SELECT ai_query('tls', 'hello', failOnError => false).errorMessage"
        with aiquery.connect(endpoints={"tls": {"base_url": base_url, "model": "m", "max_attempts": 1}},
                             engine=aiquery.Engine()) as con:
            (error,), = con.sql(query).fetchall()
        assert "endpoint 'tls': request failed" in error and "certificate" in error.lower()
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        script = ("import aiquery, sys; con = aiquery.connect(endpoints={'tls': {'base_url': sys.argv[1], "
                  "'model': 'm'}}); print(con.sql(\"SELECT ai_query('tls', 'hello')\").fetchall())")
        out = subprocess.run([sys.executable, "-c", script, base_url], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "SSL_CERT_FILE": str(bundle), "AIQUERY_CACHE_DIR": str(tmp_path)})
        assert out.stdout.strip() == "[('tls: hello',)]", out.stderr
    finally:
        stop()


@pytest.mark.slow
def test_the_canary_key_is_in_no_log_cache_usage_table_or_cli_output(endpoints, server, cache_dir, caplog,
                                                                      tmp_path, monkeypatch):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql("SELECT ai_query('chat', 'row ' || i), ai_query('embed', 'e' || i), ai_query('db-chat', 'd' || i) "
                "FROM range(20) t(i)").fetchall()
        con.sql("SELECT ai_query('chat', 'x [[status=401]]', failOnError => false)").fetchall()
        usage = str(con.sql("SELECT * FROM aiquery_usage()").fetchall() +
                    con.sql("SELECT * FROM aiquery_query_usage()").fetchall())
    _cache.close_all()
    cached = b"".join(p.read_bytes() for p in cache_dir.iterdir())
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{server.openai_base}"\nmodel = "m"\napi_key_env = "FAKE_KEY"\n')
    cli = subprocess.run([sys.executable, "-m", "aiquery._cli", "run", "--config", str(config), "-e",
                          "SELECT ai_query('chat', 'x [[status=401]]')"], capture_output=True, text=True,
                         env={**os.environ, "AIQUERY_CACHE_DIR": str(tmp_path)}, timeout=60)
    assert cli.returncode == 1 and "HTTP 401" in cli.stderr and "FAKE_KEY" in cli.stderr
    assert server.requests and all(r.headers.get("authorization", "").endswith(CANARY_KEY)
                                   for r in server.requests if r.path.startswith("/v1"))  # the key was used
    for place, text in [("logs", caplog.text), ("usage tables", usage), ("cache", cached.decode("latin-1")),
                        ("CLI output", cli.stdout + cli.stderr)]:
        assert CANARY_KEY not in text, f"the key leaked into the {place}"


# ---- proxies: every client aiquery makes reads HTTP(S)_PROXY and NO_PROXY, as curl and httpx do

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
NOWHERE = "http://localhost:9/v1"  # nothing listens there: an answer can only have come through the proxy


@pytest.fixture
def proxy_env(monkeypatch):
    """set(name=value, ...): the proxy variables as given, every other form of them unset."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return lambda **names: [monkeypatch.setenv(name, value) for name, value in names.items()]


def _engine(transport: str) -> aiquery.Engine:
    from aiquery._http_process import ProcessTransport
    from aiquery._transport import AiohttpTransport, HttpxTransport
    made = {"process": ProcessTransport, "aiohttp": AiohttpTransport, "httpx": HttpxTransport}[transport]
    return aiquery.Engine(transport=made())


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
@pytest.mark.parametrize("transport", ["process", "aiohttp", "httpx"])
def test_online_requests_go_through_the_proxy_the_environment_names(server, proxy_env, monkeypatch, variable,
                                                                     transport):
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    proxy_env(**{variable: f"http://someone:p%40ss@127.0.0.1:{server.port}"})
    engine = _engine(transport)
    try:
        endpoints = {"chat": {"base_url": NOWHERE, "model": "fake-chat", "api_key_env": "FAKE_KEY", "max_attempts": 1}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
            assert con.sql("SELECT ai_query('chat', 'hi')").fetchall() == [("echo: hi",)]
    finally:
        engine.close()
    [request] = server.requests
    assert request.headers["host"] == "localhost:9" and request.path == "/v1/chat/completions"
    assert request.headers["proxy-authorization"] == "Basic c29tZW9uZTpwQHNz"  # someone:p@ss


@pytest.mark.parametrize("transport", ["process", "aiohttp", "httpx"])
def test_https_goes_through_the_proxy_as_a_tunnel_and_its_refusal_is_the_rows_error(proxy_env, monkeypatch,
                                                                                     transport):
    from hostile import HostileServer, http

    async def refuse(request, writer):
        writer.write(http(403, b"no tunnels here"))

    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    with HostileServer(refuse) as proxy:
        proxy_env(HTTPS_PROXY=f"http://someone:secret@{proxy.url.removeprefix('http://')}")
        engine = _engine(transport)
        try:
            endpoints = {"chat": {"base_url": "https://localhost:9/v1", "model": "m", "api_key_env": "FAKE_KEY",
                                  "max_attempts": 1}}
            with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
                [(message,)] = con.sql("SELECT ai_query('chat', 'hi', failOnError => false).errorMessage").fetchall()
        finally:
            engine.close()
        requests = proxy.requests
    assert message.startswith("endpoint 'chat': request failed to https://localhost:9/v1/chat/completions"), message
    assert "403" in message and "secret" not in message and CANARY_KEY not in message, message
    assert [(r.method, r.target) for r in requests] == [("CONNECT", "localhost:9")]
    assert "authorization" not in requests[0].headers  # the key stays inside the tunnel
    assert requests[0].headers["proxy-authorization"] == "Basic c29tZW9uZTpzZWNyZXQ="  # someone:secret


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "example.com,127.0.0.1", "*"])
@pytest.mark.parametrize("transport", ["process", "aiohttp", "httpx"])
def test_no_proxy_hosts_are_reached_directly(server, proxy_env, monkeypatch, no_proxy, transport):
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    proxy_env(HTTP_PROXY="http://127.0.0.1:9", NO_PROXY=no_proxy)  # a proxy that is not there
    engine = _engine(transport)
    try:
        endpoints = {"chat": {"base_url": server.openai_base, "model": "fake-chat", "api_key_env": "FAKE_KEY",
                              "max_attempts": 1}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
            assert con.sql("SELECT ai_query('chat', 'hi')").fetchall() == [("echo: hi",)]
    finally:
        engine.close()
    assert [r.headers["host"] for r in server.requests] == [f"127.0.0.1:{server.port}"]


def test_the_batch_api_goes_through_the_proxy_too(server, proxy_env, monkeypatch):
    """`server` is a fake batch API acting as the proxy: a batch only completes through it."""
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    proxy_env(HTTP_PROXY=f"http://127.0.0.1:{server.port}")
    engine = aiquery.Engine()
    try:
        endpoints = {"chat": {"base_url": NOWHERE, "model": "fake-chat", "api_key_env": "FAKE_KEY", "batch": True,
                              "batch_poll_interval": 0.02, "max_attempts": 1}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
            rows = con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(3) t(i) ORDER BY 1").fetchall()
    finally:
        engine.close()
    assert rows == [(f"echo: row {i}",) for i in range(3)]
    assert len(server.created) == 1 and server.online_requests() == []
    assert {r.headers["host"] for r in server.requests} == {"localhost:9"}


@pytest.mark.parametrize("transport", ["process", "aiohttp", "httpx"])
def test_a_socks_proxy_in_the_environment_is_a_clear_error_not_sent_to(server, proxy_env, monkeypatch, transport):
    """aiohttp would speak HTTP to a SOCKS proxy, and httpx needs socksio for one: every row says
    what to do, and nothing is sent anywhere."""
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    proxy_env(ALL_PROXY=f"socks5://someone:secret@127.0.0.1:{server.port}")
    engine = _engine(transport)
    try:
        endpoints = {"chat": {"base_url": server.openai_base, "model": "fake-chat", "api_key_env": "FAKE_KEY"}}
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=False) as con:
            rows = con.sql("SELECT ai_query('chat', 'row ' || i, failOnError => false).errorMessage "
                           "FROM range(2) t(i)").fetchall()
    finally:
        engine.close()
    says = "HTTP proxies only" if transport != "httpx" else "socksio"
    assert all(m.startswith("endpoint 'chat': ") and says in m and "secret" not in m for (m,) in rows), rows
    assert server.requests == []
