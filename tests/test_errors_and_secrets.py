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


def test_no_key_in_reprs_errors_or_logs(con, server, endpoints, caplog):
    caplog.set_level(logging.DEBUG)
    con.sql("SELECT ai_query('chat', p, failOnError => false) FROM (VALUES ('a [[status=500]]'), ('b')) t(p)").fetchall()
    failed = con.sql("SELECT ai_query('chat', 'x [[status=400]]', failOnError => false)").fetchall()[0][0]
    from aiquery._config import load_endpoints
    from aiquery._providers import resolve

    seen = [repr(e) for e in load_endpoints(endpoints).values()]
    seen += [repr(resolve(e)) for e in load_endpoints(endpoints).values()]
    seen += [failed["errorMessage"], caplog.text]
    assert not [s for s in seen if CANARY_KEY in s]


def test_redirects_are_not_followed(con, server):
    with pytest.raises(Exception) as info:
        con.sql("SELECT ai_query('chat', 'hi [[redirect=http://127.0.0.1:9/steal]]')").fetchall()
    assert "HTTP 307" in str(info.value) and "not followed" in str(info.value)
    assert len(server.requests) == 1


def test_keys_are_refused_in_settings(tmp_path):
    config = tmp_path / "aiquery.toml"
    config.write_text('[endpoints.chat]\nbase_url = "http://x/v1"\napi_key = "sk-abc"\n')
    with pytest.raises(aiquery.ConfigError, match="never put a key in settings") as info:
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
