"""The databricks provider: URL, bearer token, host and token resolution, custom model endpoints."""

import pytest

import aiquery

from conftest import CANARY_KEY


def test_chat_goes_to_the_serving_endpoint_invocations_url(con, server):
    assert con.sql("SELECT ai_query('db-chat', 'hi')").fetchall()[0] == ("echo: hi",)
    request = server.requests[0]
    assert request.path == "/serving-endpoints/databricks-llama/invocations"
    assert request.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert "model" not in request.body and request.body["messages"] == [{"role": "user", "content": "hi"}]


def test_custom_model_gets_dataframe_records_and_return_type_shapes_the_prediction(con, server):
    result = con.sql("""SELECT ai_query('db-custom', {'rooms': 3, 'city': 'Paris'},
                                        returnType => 'STRUCT<rooms: INT, city: STRING>')""").fetchall()[0][0]
    assert result == {"rooms": 3, "city": "Paris"}
    assert server.bodies()[0] == {"dataframe_records": [{"rooms": 3, "city": "Paris"}]}
    as_json = con.sql("SELECT ai_query('db-custom', {'rooms': 3})").fetchall()[0][0]
    assert as_json == '{"rooms": 3}'


def test_host_and_token_come_from_a_databrickscfg_profile(server, monkeypatch, tmp_path):
    cfg = tmp_path / "databrickscfg"
    cfg.write_text(f"[DEFAULT]\nhost = http://nowhere.invalid\ntoken = wrong\n\n"
                   f"[staging]\nhost = {server.url}\ntoken = {CANARY_KEY}\n")
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    endpoints = {"llm": {"provider": "databricks", "model": "databricks-llama", "profile": "staging"}}
    with aiquery.connect(endpoints=endpoints) as con:
        assert con.sql("SELECT ai_query('llm', 'hi')").fetchall()[0] == ("echo: hi",)
    assert server.requests[0].headers["authorization"] == f"Bearer {CANARY_KEY}"


def test_missing_host_says_how_to_set_it(monkeypatch, tmp_path):
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "none"))
    with aiquery.connect(endpoints={"llm": {"provider": "databricks"}}) as con:
        with pytest.raises(Exception, match="no Databricks host.*DATABRICKS_HOST"):
            con.sql("SELECT ai_query('llm', 'hi')").fetchall()


def test_a_bad_token_names_where_it_came_from(endpoints, server, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-wrong-token")
    with aiquery.connect(endpoints=endpoints) as con:
        with pytest.raises(Exception) as info:
            con.sql("SELECT ai_query('db-chat', 'hi')").fetchall()
    message = str(info.value)
    assert "HTTP 401" in message and "environment variable DATABRICKS_TOKEN" in message
    assert "dapi-wrong-token" not in message


def test_served_model_targets_one_model_behind_a_multi_model_endpoint(endpoints, server):
    endpoints["champion"] = {"provider": "databricks", "model": "house-llm", "served_model": "llama-v2"}
    endpoints["challenger"] = {"provider": "databricks", "model": "house-llm", "served_model": "llama-v3.1 beta"}
    with aiquery.connect(endpoints=endpoints) as con:
        assert con.sql("SELECT ai_query('champion', 'hi'), ai_query('challenger', 'hi')").fetchall() == [
            ("echo: hi", "echo: hi")]
    assert sorted(r.path for r in server.requests) == [
        "/serving-endpoints/house-llm/served-models/llama-v2/invocations",
        "/serving-endpoints/house-llm/served-models/llama-v3.1 beta/invocations"]
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {CANARY_KEY}"}
    assert all("model" not in r.body for r in server.requests)
    with pytest.raises(aiquery.ConfigError, match="served_model applies to provider = 'databricks' only"):
        aiquery.connect(endpoints={"x": {"base_url": server.openai_base, "served_model": "a"}})


def test_a_token_from_a_profile_names_the_profile_on_401(server, monkeypatch, tmp_path):
    cfg = tmp_path / "databrickscfg"
    cfg.write_text(f"[prod]\nhost = {server.url}\ntoken = dapi-revoked\n")
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "prod")
    with aiquery.connect(endpoints={"llm": {"provider": "databricks", "model": "m"}}) as con:
        with pytest.raises(Exception) as info:
            con.sql("SELECT ai_query('llm', 'hi')").fetchall()
    assert f"The key came from the token in profile [prod] in {cfg}" in str(info.value)
    assert "dapi-revoked" not in str(info.value)


def test_a_single_column_request_to_a_custom_model_goes_as_one_row_of_inputs(con, server):
    con.sql("CREATE TABLE t AS SELECT * FROM (VALUES (1, 'great film'), (2, 'dull')) v(id, review)")
    rows = con.sql("""SELECT id, ai_query('db-custom', review, returnType => 'STRING') FROM t ORDER BY id""").fetchall()
    assert rows == [(1, "great film"), (2, "dull")]  # the fake predicts its input back
    assert sorted(server.bodies(), key=str) == [{"inputs": ["dull"]}, {"inputs": ["great film"]}]
    assert con.sql("SELECT ai_query('db-custom', 41.5, returnType => 'DOUBLE')").fetchall() == [(41.5,)]
    assert con.sql("SELECT ai_query('db-custom', [1, 2, 3], returnType => 'ARRAY<INT>')").fetchall() == [([1, 2, 3],)]
    assert server.bodies()[-2:] == [{"inputs": [41.5]}, {"inputs": [[1, 2, 3]]}]


@pytest.mark.parametrize("legacy", ["'returnType', 'STRING'", "'returntype', 'STRING'", "'RETURNTYPE', 'STRING'"])
def test_the_legacy_positional_return_type_pair(con, server, legacy):
    result = con.sql(f"SELECT ai_query('db-custom', 'fine', {legacy}) AS r")
    assert result.types == ["VARCHAR"] and result.fetchall() == [("fine",)]
    typed = con.sql("SELECT ai_query('db-custom', {'rooms': 3}, 'returnType', 'STRUCT<rooms: INT>') AS r")
    assert typed.fetchall() == [({"rooms": 3},)]
    assert server.bodies()[-1] == {"dataframe_records": [{"rooms": 3}]}


def test_a_string_third_argument_that_is_not_the_legacy_pair_says_so(con, server):
    with pytest.raises(Exception, match=r"the third argument, \"retType\", is not modelParameters .*"
                                        r"ai_query\(endpoint, request, 'returnType', 'TYPE'\)"):
        con.sql("SELECT ai_query('db-custom', 'x', 'retType', 'STRING')").fetchall()
    assert server.requests == []


def test_reading_the_legacy_pair_leaves_a_column_of_model_parameters_working(con, server):
    rows = con.sql("""SELECT i, ai_query('chat', 'row ' || i, modelParameters => p) FROM
                      (VALUES (1, {'max_tokens': 3}), (2, {'max_tokens': 4})) t(i, p) ORDER BY i""").fetchall()
    assert rows == [(1, "echo: row 1"), (2, "echo: row 2")]
    assert sorted(b["max_tokens"] for b in server.bodies()) == [3, 4]
