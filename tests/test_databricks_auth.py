"""Databricks auth the way the Databricks SDK resolves it: PAT, OAuth M2M tokens that are shared and
refreshed, databricks-sdk for every other auth type, and errors that say where settings came from.

The workspace is a FakeServer with a FakeOAuth token service (tests/fakeserver.py): it issues tokens
that live as long as a test asks, counts token requests, and answers 401 to a serving request whose
token has expired, when the request arrives or while it is being served.
"""

import base64
import logging
import os
import time

import pytest

import aiquery
from aiquery import _auth
from aiquery._cli import main as cli

from conftest import CANARY_KEY
from fakeserver import FakeOAuth, FakeServer

CLIENT_ID = "6f0c1d2e-sp-aiquery"
ENDPOINT = {"provider": "databricks", "model": "databricks-llama"}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No Databricks settings from the machine: no variables, no ~/.databrickscfg, no SDK token cache."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "GOOGLE_", "ACTIONS_ID_TOKEN")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "databrickscfg"))
    return tmp_path / "databrickscfg"


def workspace(oauth: FakeOAuth, monkeypatch, **options) -> FakeServer:
    server = FakeServer(oauth=oauth, **options).start()
    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    return server


@pytest.fixture
def engine():
    """An engine of the test's own: the shared one would keep tokens across tests (and ports get reused)."""
    e = aiquery.Engine()
    yield e
    e.close()


@pytest.fixture
def oauth():
    return FakeOAuth(CLIENT_ID, CANARY_KEY)


@pytest.fixture
def server(oauth, clean_env, monkeypatch):
    s = workspace(oauth, monkeypatch)
    yield s
    s.stop()


@pytest.fixture
def m2m_env(server, monkeypatch):
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CANARY_KEY)


def serving(server):
    return [r for r in server.requests if r.path.startswith("/serving-endpoints/")]


def rows(n, extra=""):
    return f"SELECT i, ai_query('db', 'row ' || i{extra}) AS a FROM range({n}) t(i) ORDER BY i"


def visible_text(con, caplog, cache_dir, *more):
    """Everything a user can see after a job: usage tables, logs, the cache file, and `more`."""
    usage = str(con.sql("SELECT * FROM aiquery_usage()").fetchall())
    usage += str(con.sql("SELECT * FROM aiquery_query_usage()").fetchall())
    files = b"".join(p.read_bytes() for p in cache_dir.rglob("*") if p.is_file())
    return "\n".join([usage, caplog.text, files.decode("latin-1"), *map(str, more)])


@pytest.mark.slow
def test_m2m_token_is_fetched_once_and_shared_by_every_request_and_connection(engine, server, oauth, m2m_env):
    endpoints = {"db": {**ENDPOINT, "max_concurrency": 16}}
    with aiquery.connect(engine=engine, endpoints=endpoints) as con, \
            aiquery.connect(engine=engine, endpoints=endpoints) as other:
        assert con.sql(rows(200)).fetchall() == [(i, f"echo: row {i}") for i in range(200)]
        assert other.sql(rows(250)).fetchall()[-1] == (249, "echo: row 249")
        assert con.cursor().sql("SELECT ai_query('db', 'from a cursor')").fetchall() == [("echo: from a cursor",)]
    assert oauth.token_requests == 1  # 251 requests, two connections and a cursor: one token
    token_request = next(r for r in server.requests if r.path == "/oidc/v1/token")
    assert token_request.raw == b"grant_type=client_credentials&scope=all-apis"
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    basic = base64.b64encode(f"{CLIENT_ID}:{CANARY_KEY}".encode()).decode()
    assert token_request.headers["authorization"] == f"Basic {basic}"
    assert {r.headers["authorization"] for r in serving(server)} == {f"Bearer {oauth.issued[0]}"}
    assert len(serving(server)) == 251


def test_m2m_from_a_profile_and_a_wrong_secret_says_where_each_setting_came_from(engine, 
        clean_env, monkeypatch, caplog, cache_dir):
    oauth = FakeOAuth(CLIENT_ID, "the-right-secret", echo_secret=True)  # it echoes the secret it was sent
    server = workspace(oauth, monkeypatch)
    monkeypatch.delenv("DATABRICKS_HOST")
    clean_env.write_text(f"[DEFAULT]\nhost = https://elsewhere.invalid\ntoken = dapi-default\n\n"
                         f"[prod]\nhost = {server.url}\nclient_id = {CLIENT_ID}\nclient_secret = {CANARY_KEY}\n")
    caplog.set_level(logging.DEBUG)
    try:
        with aiquery.connect(engine=engine, endpoints={"db": {**ENDPOINT, "profile": "prod"}}) as con:
            with pytest.raises(Exception) as info:
                con.sql("SELECT ai_query('db', 'hi')").fetchall()
            seen = visible_text(con, caplog, cache_dir, info.value)
    finally:
        server.stop()
    message = str(info.value)
    assert f"OAuth M2M token request to {server.url}/oidc/v1/token failed: HTTP 401 invalid_client" in message
    assert f"the client id came from profile [prod] in {clean_env}, the secret from profile [prod] in {clean_env}" \
        in message
    assert "check that the secret is current" in message
    assert oauth.token_requests == 1 and serving(server) == []
    assert CANARY_KEY not in seen and "dapi-default" not in seen


def test_a_wrong_secret_fails_every_row_clearly_after_one_token_request(engine, server, oauth, monkeypatch, caplog,
                                                                         cache_dir):
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", "sk-wrong-4d2a")
    oauth.echo_secret = True
    caplog.set_level(logging.DEBUG)
    with aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:
        result = con.sql(rows(50, ", failOnError => false")).fetchall()
        seen = visible_text(con, caplog, cache_dir, result)
    errors = {row[1]["errorMessage"] for row in result}
    assert len(errors) == 1 and all(row[1]["response"] is None for row in result)
    (error,) = errors
    assert "endpoint 'db': OAuth M2M token request" in error and "HTTP 401 invalid_client" in error
    assert "the client id came from environment variable DATABRICKS_CLIENT_ID, the secret from environment " \
           "variable DATABRICKS_CLIENT_SECRET" in error
    assert "secret ***" in error  # the server echoed it; the error does not
    assert oauth.token_requests == 1 and serving(server) == []
    assert "sk-wrong-4d2a" not in seen and CANARY_KEY not in seen


def test_a_revoked_token_is_refreshed_once_after_a_401_and_the_rows_go_again(engine, server, oauth, m2m_env):
    with aiquery.connect(engine=engine, endpoints={"db": {**ENDPOINT, "max_concurrency": 8}}) as con:
        con.sql(rows(5)).fetchall()
        oauth.revoke()  # the workspace stops accepting the token it issued
        assert con.sql(rows(40, " || ' again'")).fetchall()[-1] == (39, "echo: row 39 again")
        usage = con.sql("SELECT requests, retries, errors FROM aiquery_usage() WHERE endpoint = 'db'").fetchall()[0]
    assert oauth.token_requests == 2  # one more token, not one per refused request
    refused = [r for r in serving(server) if r.status == 401]
    assert 1 <= len(refused) <= 8 and oauth.expired_rejections == len(refused)
    assert {r.headers["authorization"] for r in refused} == {f"Bearer {oauth.issued[0]}"}
    assert len(serving(server)) == 45 + len(refused)  # each refused request was sent once more
    assert usage == (45 + len(refused), len(refused), 0)


def test_a_workspace_that_refuses_fresh_tokens_is_an_error_not_a_loop(engine, clean_env, monkeypatch):
    oauth = FakeOAuth(CLIENT_ID, CANARY_KEY, honoured=0)  # every token it issues is refused
    server = workspace(oauth, monkeypatch)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CANARY_KEY)
    try:
        with aiquery.connect(engine=engine, endpoints={"db": {**ENDPOINT, "max_concurrency": 4}}) as con:
            result = con.sql(rows(30, ", failOnError => false")).fetchall()
    finally:
        server.stop()
    messages = {row[1]["errorMessage"] for row in result}
    assert len(messages) == 1 and all(row[1]["response"] is None for row in result)
    (message,) = messages
    assert "HTTP 401" in message and "Token expired" in message and "refused even after a refresh" in message
    assert "OAuth M2M: the client id came from environment variable DATABRICKS_CLIENT_ID" in message
    assert oauth.token_requests == 2  # the first token, and one refresh after its 401s
    assert len(serving(server)) <= 30 + 2 * 4  # each row once, and those in flight at a 401 once more


# Tokens live LIFETIME seconds; aiquery refreshes them a quarter of their life before they expire.
LIFETIME = 3.0
REFRESH_EVERY = LIFETIME * 0.75


@pytest.mark.slow  # several 3-s token lifetimes
def test_a_long_job_outlives_several_token_lifetimes_without_a_failed_row(engine, clean_env, monkeypatch, caplog,
                                                                          cache_dir):
    # 2,000 rows; every 10th is served in 1 s, longer than a token's last quarter, so tokens
    # expire while such requests are being served (the fake then answers 401 "Token expired").
    oauth = FakeOAuth(CLIENT_ID, CANARY_KEY, lifetime=LIFETIME)
    server = workspace(oauth, monkeypatch, latency=0.02)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CANARY_KEY)
    caplog.set_level(logging.DEBUG)
    sql = rows(2000, " || CASE WHEN i % 10 = 0 THEN ' [[sleep=1]]' ELSE '' END")
    try:
        with aiquery.connect(engine=engine, endpoints={"db": {**ENDPOINT, "max_concurrency": 32}}) as con:
            started = time.monotonic()
            result = con.sql(sql).fetchall()
            elapsed = time.monotonic() - started
            errors = con.sql("SELECT errors FROM aiquery_usage() WHERE endpoint = 'db'").fetchall()[0][0]
            seen = visible_text(con, caplog, cache_dir)
    finally:
        server.stop()
    print(f"\n2,000 rows in {elapsed:.1f} s with {LIFETIME:g}-s tokens: {oauth.token_requests} tokens fetched, "
          f"{oauth.expired_rejections} requests refused with an expired token and sent again, {errors} failed rows")
    assert [a for _, a in result] == [f"echo: row {i}" + (" [[sleep=1]]" if i % 10 == 0 else "") for i in range(2000)]
    assert errors == 0
    assert elapsed > 2 * LIFETIME  # several lifetimes (about 7 s here; more on a busy machine)
    # Tokens: one per REFRESH_EVERY seconds of the job, plus the first; never one per row or per 401.
    assert 2 <= oauth.token_requests <= elapsed / REFRESH_EVERY + 2
    # Tokens did expire in flight, and each such request went again once with a newer token.
    assert oauth.expired_rejections >= 1
    refused = [r for r in serving(server) if r.status == 401]
    assert len(refused) == oauth.expired_rejections
    assert len(serving(server)) == 2000 + len(refused)
    assert all(r.status == 200 for r in serving(server) if r.status != 401)
    assert CANARY_KEY not in seen and not any(token in seen for token in oauth.issued)


def test_a_token_and_a_client_secret_together_must_be_chosen_between(engine, server, oauth, m2m_env, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-also-set")
    with aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:
        with pytest.raises(Exception) as info:
            con.sql("SELECT ai_query('db', 'hi')").fetchall()
    message = str(info.value)
    assert "more than one Databricks auth type" in message and "environment variable DATABRICKS_TOKEN" in message
    assert "set auth_type = 'pat' or 'oauth-m2m'" in message and "dapi-also-set" not in message
    with aiquery.connect(engine=engine, endpoints={"db": {**ENDPOINT, "auth_type": "oauth-m2m"}}) as con:
        assert con.sql("SELECT ai_query('db', 'hi')").fetchall() == [("echo: hi",)]
    assert oauth.token_requests == 1 and server.requests[0].path == "/oidc/v1/token"


def test_renamed_variables_for_several_service_principals(engine, server, oauth, monkeypatch):
    monkeypatch.setenv("TEAM_A_CLIENT", CLIENT_ID)
    monkeypatch.setenv("TEAM_A_SECRET", CANARY_KEY)
    endpoint = {**ENDPOINT, "client_id_env": "TEAM_A_CLIENT", "client_secret_env": "TEAM_A_SECRET"}
    with aiquery.connect(engine=engine, endpoints={"db": endpoint}) as con:
        assert con.sql("SELECT ai_query('db', 'hi')").fetchall() == [("echo: hi",)]
    monkeypatch.delenv("TEAM_A_SECRET")
    with aiquery.connect(engine=engine, endpoints={"db": endpoint}) as con:
        with pytest.raises(Exception, match="OAuth M2M needs a client id and secret; no client_secret: export "
                                            "TEAM_A_SECRET"):
            con.sql("SELECT ai_query('db', 'hi 2')").fetchall()


@pytest.mark.slow
def test_the_profile_is_read_as_the_sdk_reads_it(engine, clean_env, monkeypatch, server, oauth):
    clean_env.write_text(f"[__settings__]\ndefault_profile = prod\n\n[DEFAULT]\ntoken = dapi-default\n\n"
                         f"[prod]\nhost = {server.url}\nclient_id = {CLIENT_ID}\nclient_secret = {CANARY_KEY}\n")
    # DATABRICKS_HOST is set (by the fixture): like the SDK, no profile is read unless one is named.
    with monkeypatch.context() as without_sdk, aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:
        without_sdk.setattr(_auth, "sdk_installed", lambda: False)  # else the SDK's chain would try and fail
        with pytest.raises(Exception) as info:
            con.sql("SELECT ai_query('db', 'hi')").fetchall()
    assert "no Databricks credentials" in str(info.value)
    assert f"to {clean_env} (not read: settings or environment already configure this endpoint" in str(info.value)
    monkeypatch.delenv("DATABRICKS_HOST")  # now [__settings__] default_profile picks [prod], not [DEFAULT]
    with aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:
        assert con.sql("SELECT ai_query('db', 'hi')").fetchall() == [("echo: hi",)]
    assert oauth.token_requests == 1
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "staging")
    with aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:
        with pytest.raises(Exception, match=r"profile \[staging\] in .* not found \(named by environment variable "
                                            "DATABRICKS_CONFIG_PROFILE\\)"):
            con.sql("SELECT ai_query('db', 'hi')").fetchall()


def test_estimate_and_planning_fetch_no_token(engine, server, oauth, m2m_env):
    with aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:
        report = aiquery.estimate(con, rows(10))
        con.sql(f"EXPLAIN {rows(10)}").fetchall()
        con.sql(f"DESCRIBE {rows(10)}").fetchall()
    assert report and oauth.token_requests == 0 and server.requests == []


def test_a_host_outside_allowed_hosts_gets_no_token_request(engine, server, oauth, m2m_env, monkeypatch):
    monkeypatch.setenv("AIQUERY_ALLOWED_HOSTS", "*.cloud.databricks.com")
    with aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:
        with pytest.raises(Exception, match="host '127.0.0.1' is not in allowed_hosts"):
            con.sql("SELECT ai_query('db', 'hi')").fetchall()
    assert server.requests == []


def test_without_databricks_sdk_other_auth_types_say_how_to_get_it(engine, clean_env, monkeypatch):
    monkeypatch.setattr(_auth, "sdk_installed", lambda: False)
    monkeypatch.setenv("DATABRICKS_HOST", "https://adb-1.azuredatabricks.net")
    endpoints = {"db": {**ENDPOINT, "auth_type": "azure-cli"}, "none": ENDPOINT}
    with aiquery.connect(engine=engine, endpoints=endpoints) as con:
        with pytest.raises(Exception) as info:
            con.sql("SELECT ai_query('db', 'hi')").fetchall()
        assert "auth_type 'azure-cli' (the endpoint's auth_type setting) is one of databricks-sdk's" in str(info.value)
        assert "pip install 'aiquery[databricks]'" in str(info.value)
        with pytest.raises(Exception) as info:
            con.sql("SELECT ai_query('none', 'hi')").fetchall()
        message = str(info.value)
        assert "no Databricks credentials; export DATABRICKS_TOKEN" in message
        assert "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET" in message and "aiquery[databricks]" in message


def test_secrets_are_refused_in_settings_and_cli_output_shows_none(server, m2m_env, tmp_path, capsys):
    config = tmp_path / "aiquery.toml"
    config.write_text('[endpoints.db]\nprovider = "databricks"\nclient_secret = "x-secret"\n')
    with pytest.raises(aiquery.ConfigError, match="never put a key in settings") as info:
        aiquery.connect(config=config)
    assert "x-secret" not in str(info.value)
    config.write_text('[endpoints.db]\nprovider = "databricks"\nmodel = "databricks-llama"\nauth_type = "oauth-m2m"\n')
    assert cli(["endpoints", "--config", str(config)]) == 0
    assert cli(["run", "--config", str(config), "-e", "SELECT ai_query('db', 'from the cli') AS a"]) == 0
    out = capsys.readouterr()
    assert "echo: from the cli" in out.out and CANARY_KEY not in out.out + out.err


# ---- databricks-sdk: every other auth type, through its own Config


@pytest.fixture
def sdk():
    return pytest.importorskip("databricks.sdk")


@pytest.mark.slow
def test_the_sdk_resolves_m2m_through_its_discovery_documents(engine, sdk, server, oauth, m2m_env):
    with aiquery.connect(engine=engine, endpoints={"db": {**ENDPOINT, "auth_type": "databricks-sdk"}}) as con:
        assert con.sql(rows(100)).fetchall()[-1] == (99, "echo: row 99")
    paths = [r.path for r in server.requests if not r.path.startswith("/serving-endpoints/")]
    assert paths == ["/.well-known/databricks-config", "/oidc/.well-known/oauth-authorization-server",
                     "/oidc/v1/token"]
    assert oauth.token_requests == 1 and len(serving(server)) == 100
    assert {r.headers["authorization"] for r in serving(server)} == {f"Bearer {oauth.issued[0]}"}


def test_the_sdk_metadata_service_auth_type(engine, sdk, server, oauth, monkeypatch):
    monkeypatch.setenv("DATABRICKS_METADATA_SERVICE_URL", server.url + "/metadata-service/token")
    with aiquery.connect(engine=engine, endpoints={"db": ENDPOINT}) as con:  # no token, no client: the SDK's chain
        assert con.sql(rows(20)).fetchall()[-1] == (19, "echo: row 19")
    assert oauth.metadata_requests == 1 and oauth.token_requests == 0
    assert {r.headers["authorization"] for r in serving(server)} == {f"Bearer {oauth.issued[0]}"}


@pytest.mark.slow
def test_the_sdk_refreshes_after_a_401_and_its_errors_show_no_secret(engine, sdk, server, oauth, m2m_env, monkeypatch,
                                                                      caplog, cache_dir):
    caplog.set_level(logging.DEBUG)
    endpoints = {"db": {**ENDPOINT, "auth_type": "databricks-sdk", "max_concurrency": 4}}
    with aiquery.connect(engine=engine, endpoints=endpoints) as con:
        con.sql(rows(5)).fetchall()
        oauth.revoke()
        assert con.sql(rows(20, " || ' again'")).fetchall()[-1] == (19, "echo: row 19 again")
    assert oauth.token_requests == 2
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CANARY_KEY + "-old")
    oauth.echo_secret = True
    with aiquery.connect(engine=engine, endpoints={"sdk": endpoints["db"]}) as con:
        bad = con.sql("SELECT ai_query('sdk', 'hi 3', failOnError => false)").fetchall()[0][0]["errorMessage"]
        seen = visible_text(con, caplog, cache_dir, bad)
    assert "databricks-sdk could not authenticate (databricks-sdk, auth_type oauth-m2m (Config: " in bad
    assert "client_secret=***" in bad and "invalid_client: Client authentication failed" in bad
    assert "with secret ***" in bad  # the server echoed the secret; the error does not
    assert CANARY_KEY not in seen
