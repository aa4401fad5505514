"""Failing loudly and clearly, and never leaking a key or letting data pick a URL."""

import logging

import pytest

import aiquery

from conftest import CANARY_KEY


def test_unknown_endpoint_fails_before_any_request_with_the_nearest_name(con, server):
    with pytest.raises(Exception) as info:
        con.sql("SELECT ai_query('chta', 'hi')").fetchall()
    message = str(info.value)
    assert "unknown endpoint 'chta'" in message and "Did you mean 'chat'?" in message
    assert "completions" in message and "db-chat" in message  # lists what is registered
    assert server.requests == []


def test_an_endpoint_named_in_the_data_cannot_reach_another_url(con, server):
    # As in Databricks, the endpoint is a constant: DuckDB refuses a column there while binding.
    with pytest.raises(Exception, match="must be a constant"):
        con.sql("SELECT ai_query(e, 'hi') FROM (VALUES ('http://evil.example/v1')) t(e)").fetchall()
    with pytest.raises(Exception, match="unknown endpoint 'http://evil.example/v1'"):
        con.sql("SELECT ai_query('http://evil.example/v1', 'hi')").fetchall()
    assert server.requests == []


def test_wrong_key_names_the_variable_and_never_shows_the_key(endpoints, server, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_KEY", "sk-wrong-0000")
    caplog.set_level(logging.DEBUG)
    with aiquery.connect(endpoints=endpoints) as con:
        with pytest.raises(Exception) as info:
            con.sql("SELECT ai_query('chat', 'hi')").fetchall()
    message = str(info.value)
    assert "HTTP 401" in message and "environment variable FAKE_KEY" in message
    assert "Invalid API key" in message
    assert "sk-wrong-0000" not in message and "sk-wrong-0000" not in caplog.text


def test_missing_key_variable_is_a_clear_error(endpoints, monkeypatch):
    monkeypatch.delenv("FAKE_KEY")
    with aiquery.connect(endpoints=endpoints) as con:
        with pytest.raises(Exception, match="environment variable FAKE_KEY is not set"):
            con.sql("SELECT ai_query('chat', 'hi')").fetchall()


@pytest.mark.slow  # every surface of every kind of endpoint
def test_no_key_in_reprs_errors_or_logs(con, server, endpoints, caplog):
    caplog.set_level(logging.DEBUG)
    con.sql("SELECT ai_query('chat', p, failOnError => false) FROM (VALUES ('a [[status=500]]'), ('b')) t(p)").fetchall()
    failed = con.sql("SELECT ai_query('chat', 'x [[status=400]]', failOnError => false)").fetchall()[0][0]
    from aiquery._config import read_settings
    from aiquery._providers import resolve

    seen = [repr(e) for e in read_settings(endpoints=endpoints).endpoints.values()]
    seen += [repr(resolve(e)) for e in read_settings(endpoints=endpoints).endpoints.values()]
    seen += [failed["errorMessage"], caplog.text]
    assert not [s for s in seen if CANARY_KEY in s]


def test_redirects_are_not_followed(con, server):
    with pytest.raises(Exception) as info:
        con.sql("SELECT ai_query('chat', 'hi [[redirect=http://127.0.0.1:9/steal]]')").fetchall()
    assert "HTTP 307" in str(info.value) and "not followed" in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("setting, says", [
    ('api_key = "sk-abc-in-file"', "never put a key in settings"),
    ('headers = {"api-key" = "sk-abc-in-file"}', "never put a key in headers.*api_key_header"),
    ('headers = {"Authorization" = "Bearer sk-abc-in-file"}', "never put a key in headers"),
])
def test_keys_are_refused_in_settings(tmp_path, setting, says):
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "http://x/v1"\n{setting}\n')
    with pytest.raises(aiquery.ConfigError, match=says) as info:
        aiquery.connect(config=config)
    assert "sk-abc" not in str(info.value)


def test_bad_model_parameters_fail_naming_the_parameter(con, server):
    with pytest.raises(Exception, match="'max_tokens' must be int"):
        con.sql("SELECT ai_query('chat', 'hi', modelParameters => {'max_tokens': 'lots'})").fetchall()
    with pytest.raises(Exception, match="modelParameters must be a struct or map"):
        con.sql("SELECT ai_query('chat', 'hi', modelParameters => 5)").fetchall()
    assert server.requests == []


def test_bad_type_strings_fail_naming_the_argument(con, server):
    with pytest.raises(Exception, match="Type with name NOPE does not exist"):  # DuckDB's check, at bind time
        con.sql("SELECT ai_query('chat', 'hi', returnType => 'STRUCT<a: NOPE>')").fetchall()
    with pytest.raises(Exception, match="returnType"):
        con.sql("SELECT ai_query('chat', 'hi', returnType => 'STRUCT<a: BLOB>')").fetchall()
    with pytest.raises(Exception, match="responseFormat"):
        con.sql("""SELECT ai_query('chat', 'hi', responseFormat => '{"type":"yaml"}')""").fetchall()
    assert server.requests == []


def test_response_format_on_an_embedding_endpoint_is_refused(con, server):
    with pytest.raises(Exception, match="responseFormat applies to chat endpoints only"):
        con.sql("""SELECT ai_query('embed', 'hi', responseFormat => '{"type":"json_object"}')""").fetchall()


def test_server_errors_with_html_bodies_are_summarised(endpoints, server):
    endpoints["chat"]["max_attempts"] = 1
    with aiquery.connect(endpoints=endpoints) as con:
        result = con.sql("SELECT ai_query('chat', 'x [[html]]', failOnError => false)").fetchall()[0][0]
    assert "HTTP 502" in result["errorMessage"] and "502 Bad Gateway" in result["errorMessage"]
    assert "<html>" not in result["errorMessage"]


def test_every_form_of_a_key_a_server_may_echo_is_redacted():
    import base64
    from urllib.parse import quote

    from aiquery._scrub import Secrets

    key = "sk-pr/oj+ect=k3y"
    basic = base64.b64encode(b"token:dapi-basic-secret").decode()
    secrets = Secrets.of(key, {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                               "X-Proxy-Authorization": f"Basic {basic}", "Ocp-Apim-Subscription-Key": "apim-secret-1",
                               "X-Trace": "not-a-secret-value"})
    echoed = (f"Bearer {key} | {quote(key, safe='')} | {base64.b64encode(key.encode()).decode()} | "
              f"{base64.b64encode(f'token:{key}'.encode()).decode()} | Basic {basic} | dapi-basic-secret | "
              "apim-secret-1 | application/json | not-a-secret-value")
    redacted = secrets.redact(echoed)
    for secret in (key, quote(key, safe=""), base64.b64encode(key.encode()).decode().rstrip("="), "dapi-basic-secret",
                   base64.b64encode(b"dapi-basic-secret").decode().rstrip("="), "apim-secret-1"):
        assert secret not in redacted, (secret, redacted)
    assert redacted.startswith("Bearer [REDACTED] |") and "application/json" in redacted
    assert "not-a-secret-value" in redacted
    assert secrets.redact_bytes(echoed.encode()) == redacted.encode()
    assert "sk-pr" not in repr(secrets) and not Secrets.of(None, {"Authorization": "Bearer abc"})  # too short to search


def test_terminal_controls_are_removed_and_text_kept():
    from aiquery._scrub import printable, shorten

    assert printable("a\x1b]0;title\x07b\x1b[1;31mc\x1b[0m\td\ne\x9b2Jf\u202eg\x00h\udcff") == "abc\td\nefgh"
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert shorten("x" * 1000, 10) == "xxxxxxxxxx... (1,000 bytes)"


@pytest.mark.parametrize("url, shown", [
    ("https://user:pw@h.example/v1", "https://[REDACTED]@h.example/v1"),
    ("https://h.example/v1?api-version=2024-06-01&api_key=abc&sig=x", "https://h.example/v1?api-version=2024-06-01"
                                                                       "&api_key=[REDACTED]&sig=[REDACTED]"),
    ("http://h.example:8080/v1", "http://h.example:8080/v1"),
    ("http://[::1", "(not a valid URL)"),
])
def test_urls_are_printed_without_credentials(url, shown):
    from aiquery._scrub import safe_url

    assert safe_url(url) == shown
