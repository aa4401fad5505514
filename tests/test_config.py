"""Endpoint settings: TOML files, dicts, Endpoint objects, defaults and their checks."""

import duckdb
import pytest

import aiquery
from aiquery._config import BUILTIN_ENDPOINTS as BUILTINS, read_settings


def test_settings_from_a_toml_file(tmp_path, server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-canary-7f3a9c1e5b")
    config = tmp_path / "settings.toml"
    config.write_text(f"""
[endpoints.fast]
task = "chat"
base_url = "{server.openai_base}"
model = "small"
api_key_env = "FAKE_KEY"
max_concurrency = 4
timeout = 30
model_parameters = {{ max_tokens = 7 }}
""")
    with aiquery.connect(config=config) as con:
        assert con.sql("SELECT ai_query('fast', 'hi')").fetchall()[0] == ("echo: hi",)
    assert server.bodies()[0]["max_tokens"] == 7 and server.bodies()[0]["model"] == "small"
    assert read_settings(config).endpoints["fast"].source == str(config)


def test_aiquery_toml_in_the_working_directory_and_aiquery_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIQUERY_CONFIG", raising=False)
    (tmp_path / "aiquery.toml").write_text('[endpoints.here]\nbase_url = "http://127.0.0.1:1/v1"\n')
    assert list(read_settings().endpoints) == [*BUILTINS, "here"]
    other = tmp_path / "other.toml"
    other.write_text('[endpoints.there]\ntask = "embeddings"\nbase_url = "http://127.0.0.1:1/v1"\n')
    monkeypatch.setenv("AIQUERY_CONFIG", str(other))
    assert list(read_settings().endpoints) == [*BUILTINS, "there"]


def test_builtin_local_endpoints_are_always_there_and_settings_can_replace_them(tmp_path):
    endpoints = read_settings().endpoints
    assert {n: (e.task, e.provider, e.source) for n, e in endpoints.items() if n in BUILTINS} == {
        "local-chat": ("chat", "local", "built-in"), "local-completions": ("completions", "local", "built-in"),
        "local-embed": ("embeddings", "local", "built-in"), "local-classify": ("chat", "local", "built-in")}
    config = tmp_path / "a.toml"
    config.write_text('[endpoints.local-chat]\nbase_url = "http://127.0.0.1:1/v1"\n')
    replaced = read_settings(config).endpoints["local-chat"]
    assert (replaced.provider, replaced.base_url, replaced.source) == ("openai", "http://127.0.0.1:1/v1", str(config))


def test_a_local_endpoint_must_name_a_builtin_model():
    with aiquery.connect(endpoints={"mine": {"provider": "local", "model": "gpt-9"}}) as con:
        with pytest.raises(duckdb.Error, match="endpoint .mine.: provider 'local' runs a built-in model: "
                                                      "set model to one of smollm2-135m-instruct, all-minilm-l6-v2, "
                                                      "minilm-zero-shot"):
            con.sql("SELECT ai_query('mine', 'hi')").fetchall()


def test_python_settings_override_the_file(tmp_path):
    config = tmp_path / "a.toml"
    config.write_text('[endpoints.x]\nbase_url = "http://127.0.0.1:1/v1"\nmodel = "from-file"\n')
    merged = read_settings(config, {"x": aiquery.Endpoint(base_url="http://127.0.0.1:2/v1", model="from-python")}).endpoints
    assert merged["x"].model == "from-python" and merged["x"].source == "python"


@pytest.mark.parametrize("settings, message", [
    ({"task": "summarize"}, "task 'summarize' is not one of chat, completions, embeddings, custom"),
    ({"provider": "azure"}, "provider 'azure' is not one of openai, databricks"),
    ({"max_concurency": 4}, "unknown setting 'max_concurency'; did you mean 'max_concurrency'?"),
    ({"max_concurrency": 0}, "max_concurrency must be a positive integer"),
    ({"timeout": -1}, "timeout must be a positive number of seconds"),
    ({"api_key_env": "sk-abc123-def"}, "api_key_env must be the NAME of an environment variable"),
    ({"token": "dapi123"}, "never put a key in settings"),
])
def test_bad_settings_say_what_is_wrong(settings, message):
    with pytest.raises(aiquery.ConfigError, match="endpoint 'e'") as info:
        read_settings(endpoints={"e": settings})
    assert message in str(info.value)


def test_bad_toml_names_the_file(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[endpoints.x\n")
    with pytest.raises(aiquery.ConfigError, match="broken.toml.*not valid TOML"):
        read_settings(config).endpoints


def test_an_existing_connection_can_be_registered(endpoints, server):
    import duckdb

    con = duckdb.connect()
    assert aiquery.register(con, endpoints=endpoints) is con
    assert con.sql("SELECT ai_query('chat', 'hi')").fetchall()[0] == ("echo: hi",)
    con.close()


def test_macros_are_temporary_so_a_database_file_stays_clean(endpoints, server, tmp_path):
    import duckdb

    path = str(tmp_path / "data.duckdb")
    with aiquery.connect(path, endpoints=endpoints) as con:
        con.sql("CREATE TABLE t AS SELECT ai_query('chat', 'hi') AS a")
    with duckdb.connect(path) as plain:
        assert plain.sql("SELECT * FROM t").fetchall() == [("echo: hi",)]
        assert plain.sql("SELECT count(*) FROM duckdb_functions() WHERE function_name = 'ai_query'").fetchall()[0] == (0,)
