"""Settings: one file, chosen by one rule and read once, gives endpoints, prices, allowed_hosts and the
task functions' defaults; `endpoints=` is layered on top (README, "Your own endpoints")."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import duckdb
import pytest

import aiquery
from aiquery._cli import main as cli
from aiquery._config import read_settings
from aiquery._registration import registration_of
from conftest import CANARY_KEY


@pytest.fixture
def place(tmp_path, monkeypatch, server):
    """An empty working directory, no $AIQUERY_CONFIG, and `write(path, model)`: a settings file whose
    endpoint 'chat' (and default chat endpoint) asks the fake server for `model`, priced by `model`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIQUERY_CONFIG", raising=False)
    monkeypatch.delenv("AIQUERY_ALLOWED_HOSTS", raising=False)
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)

    def write(name: str, model: str, extra: str = "") -> str:
        path = tmp_path / name
        path.write_text(f'default_chat_endpoint = "chat"\n{extra}\n'
                        f'[endpoints.chat]\nbase_url = "{server.openai_base}"\nmodel = "{model}"\n'
                        f'api_key_env = "FAKE_KEY"\n\n[prices."{model}"]\ninput = 1.0\noutput = 0.0\n')
        return str(path)
    return write


_asked = itertools.count()


def _model_asked(con, server) -> str:
    """The model endpoint 'chat' asks for (a new prompt each time: never an answer from the cache)."""
    server.reset()
    prompt = f"hi {next(_asked)}"
    assert con.sql(f"SELECT ai_query('chat', '{prompt}')").fetchall() == [(f"echo: {prompt}",)]
    return server.bodies("/chat/completions")[0]["model"]


@pytest.mark.slow
def test_config_wins_over_aiquery_config_which_wins_over_the_working_directory(place, server, monkeypatch):
    place("aiquery.toml", "from-cwd")
    env = place("env.toml", "from-env")
    given = place("given.toml", "from-config")
    monkeypatch.setenv("AIQUERY_CONFIG", env)
    with aiquery.connect(config=given) as con:
        assert _model_asked(con, server) == "from-config"
        settings = registration_of(con).settings
        assert (str(settings.path), settings.origin) == (given, "config=")
    with aiquery.connect() as con:
        assert _model_asked(con, server) == "from-env"
        assert registration_of(con).settings.origin == "$AIQUERY_CONFIG"
    monkeypatch.setenv("AIQUERY_CONFIG", "")  # empty: as if unset
    with aiquery.connect() as con:
        assert _model_asked(con, server) == "from-cwd"
        assert registration_of(con).settings.origin == "./aiquery.toml"
    con = duckdb.connect()
    aiquery.register(con, config=given)  # register() resolves the same way
    assert _model_asked(con, server) == "from-config"
    con.close()


def test_with_no_file_there_are_the_built_in_endpoints_only(place):
    with aiquery.connect() as con:
        settings = registration_of(con).settings
        assert settings.path is None and "no aiquery.toml in" in settings.origin
        with pytest.raises(duckdb.Error, match="unknown endpoint 'chat'.*Registered endpoints: local-chat"):
            con.sql("SELECT ai_query('chat', 'hi')").fetchall()


def test_endpoints_are_layered_on_the_files_and_win_by_name(place, server):
    place("aiquery.toml", "from-file", extra='[endpoints.other]\nbase_url = "http://127.0.0.1:1/v1"\n')
    mine = {"chat": {"base_url": server.openai_base, "model": "from-python", "api_key_env": "FAKE_KEY"}}
    with aiquery.connect(endpoints=mine) as con:
        assert _model_asked(con, server) == "from-python"
        endpoints = registration_of(con).endpoints
        assert {name: e.source for name, e in endpoints.items() if not name.startswith("local-")} == {
            "chat": "python", "other": str(Path.cwd() / "aiquery.toml")}  # the file's other endpoints stay


def test_prices_allowed_hosts_and_defaults_come_from_the_same_file_as_the_endpoints(place, server, monkeypatch):
    """Never a mix of two files: with endpoints= and $AIQUERY_CONFIG set, ./aiquery.toml plays no part."""
    place("aiquery.toml", "cwd-model", extra='allowed_hosts = ["api.openai.com"]\n'
                                             'default_embedding_endpoint = "nowhere"')
    monkeypatch.setenv("AIQUERY_CONFIG", place("env.toml", "env-model", extra='allowed_hosts = ["127.0.0.1"]'))
    mine = {"python-chat": {"base_url": server.openai_base, "model": "cwd-model", "api_key_env": "FAKE_KEY"}}
    with aiquery.connect(endpoints=mine) as con:
        # allowed_hosts of env.toml: 127.0.0.1 is allowed (./aiquery.toml's would refuse it)
        assert con.sql("SELECT ai_query('python-chat', 'hi')").fetchall() == [("echo: hi",)]
        # default_chat_endpoint of env.toml: ai_gen goes to its 'chat', not to local-chat
        server.reset()
        con.sql("SELECT ai_gen('hi')").fetchall()
        assert [b["model"] for b in server.bodies("/chat/completions")] == ["env-model"]
        # the embeddings default of ./aiquery.toml ('nowhere') was not taken either
        assert registration_of(con).settings.default_endpoints == {"chat": "chat", "embeddings": "local-embed"}
        # prices of env.toml: env-model is priced, cwd-model (priced only in ./aiquery.toml) is not
        estimates = {e.endpoint: e for e in aiquery.estimate(
            con, "SELECT ai_query('chat', 'a' || i), ai_query('python-chat', 'b' || i) FROM range(3) t(i)")}
        assert estimates["chat"].cost_usd == pytest.approx(estimates["chat"].prompt_tokens / 1e6)
        assert estimates["python-chat"].cost_usd is None


def test_config_false_reads_no_file(place, server, monkeypatch):
    place("aiquery.toml", "from-cwd", extra='allowed_hosts = ["api.openai.com"]')
    monkeypatch.setenv("AIQUERY_CONFIG", "/nonexistent/aiquery.toml")  # not even looked at
    mine = {"chat": {"base_url": server.openai_base, "model": "m", "api_key_env": "FAKE_KEY"}}
    with aiquery.connect(endpoints=mine, config=False) as con:
        assert _model_asked(con, server) == "m"  # no allowed_hosts from ./aiquery.toml
        settings = registration_of(con).settings
        assert (settings.path, settings.origin, dict(settings.prices)) == (None, "config=False", {})
        assert settings.default_endpoints["chat"] == "local-chat"


def test_a_missing_file_is_an_error_naming_it_and_who_named_it(place, tmp_path, monkeypatch, capsys):
    place("aiquery.toml", "from-cwd")  # never a silent fallback to the working directory's file
    missing = tmp_path / "typo.toml"
    with pytest.raises(aiquery.ConfigError, match=f"config file '{missing}' does not exist$"):
        aiquery.connect(config=missing)
    monkeypatch.setenv("AIQUERY_CONFIG", str(missing))
    with pytest.raises(aiquery.ConfigError) as info:
        aiquery.connect(endpoints={})
    assert str(info.value) == (f"config file '{missing}' (named by AIQUERY_CONFIG) does not exist: "
                               "point AIQUERY_CONFIG at an existing file, or unset it")
    assert cli(["endpoints"]) == 1
    assert "named by AIQUERY_CONFIG" in capsys.readouterr().err


@pytest.mark.parametrize("text, says", [
    ('[endpoints.chat]\nbase_url = "http://127.0.0.1:1/v1"\nmodel = \n', r"is not valid TOML: .*\(at line 3, column 9\)"),
    ("[endpoints.x\n", r"is not valid TOML: .*line 1"),
    (b'# caf\xe9\n', r"is not UTF-8 text \(byte 5\)"),
    ('allowed_host = ["127.0.0.1"]\n', r"unknown top-level setting 'allowed_host'; did you mean 'allowed_hosts'\?"),
    ('[endpoint.chat]\nmodel = "m"\n', r"unknown top-level setting 'endpoint'; did you mean 'endpoints'\?"),
    ('prices = 3\n', r"prices must be a table"),
    ('default_chat_endpoint = 3\n', r"default_chat_endpoint must be the name of an endpoint, got 3"),
], ids=["bad value", "unclosed table", "not utf-8", "misspelled allowed_hosts", "endpoint", "prices", "default"])
def test_a_bad_file_is_an_error_naming_the_file(place, tmp_path, monkeypatch, text, says):
    path = tmp_path / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for how in ("config", "env", "cwd"):
        kwargs = {"config": path} if how == "config" else {}
        if how == "env":
            monkeypatch.setenv("AIQUERY_CONFIG", str(path))
        if how == "cwd":
            monkeypatch.delenv("AIQUERY_CONFIG")
            path = path.rename(tmp_path / "aiquery.toml")
        with pytest.raises(aiquery.ConfigError, match=f"config file '{path}'.*{says}"):
            aiquery.connect(**kwargs)


def test_a_directory_or_wrong_type_for_config_is_a_clear_error(place, tmp_path):
    with pytest.raises(aiquery.ConfigError, match=f"config file '{tmp_path}' cannot be read: Is a directory"):
        aiquery.connect(config=tmp_path)
    for wrong in (True, 3, ""):
        with pytest.raises(aiquery.ConfigError, match="config must be the path of a TOML file, or False"):
            aiquery.connect(config=wrong)


def test_the_file_is_read_once_per_connect_and_not_again(place, server, monkeypatch):
    path = place("aiquery.toml", "first", extra='allowed_hosts = ["127.0.0.1"]')
    loads = []
    real_load = tomllib.load
    monkeypatch.setattr(tomllib, "load", lambda f: loads.append(f.name) or real_load(f))
    with aiquery.connect() as con:
        assert loads == [path]  # endpoints, prices, allowed_hosts and defaults from one parse
        place("aiquery.toml", "second")  # replaced while the connection is open: it keeps what it read
        assert _model_asked(con, server) == "first"
        con.sql("SELECT ai_gen('hi')").fetchall()
        with con.cursor() as cursor:
            assert _model_asked(cursor, server) == "first"
        assert loads == [path]
    with aiquery.connect() as con:  # a new connection reads the file as it is now
        assert _model_asked(con, server) == "second"
    assert loads == [path, path]
    assert cli(["endpoints"]) == 0 and len(loads) == 3


def test_the_cli_config_option_wins_over_aiquery_config(place, server, monkeypatch, capsys):
    monkeypatch.setenv("AIQUERY_CONFIG", place("env.toml", "from-env"))
    given = place("given.toml", "from-option")
    assert cli(["endpoints", "--config", given]) == 0
    assert "from-option" in capsys.readouterr().out
    assert cli(["run", "--config", given, "-e", "SELECT ai_query('chat', 'x') AS a"]) == 0
    assert [b["model"] for b in server.bodies("/chat/completions")] == ["from-option"]
    assert cli(["endpoints"]) == 0
    assert "from-env" in capsys.readouterr().out


def test_settings_are_visible_and_their_repr_shows_no_secret(place, server):
    path = place("aiquery.toml", "m")
    secret = {"base_url": f"http://user:{CANARY_KEY}@127.0.0.1:1/v1?api-key={CANARY_KEY}",
              "headers": {"Authorization": f"Bearer {CANARY_KEY}", "X-Team": "blue"}}
    with aiquery.connect(endpoints={"mine": aiquery.Endpoint(**secret)}) as con:
        settings = registration_of(con).settings
        shown = repr(settings) + repr(settings.endpoints["mine"]) + repr(dict(settings.endpoints))
    assert CANARY_KEY not in shown
    assert f"path='{path}' (./aiquery.toml)" in shown and "'mine' (python)" in shown and "'chat' (" + path in shown
    assert "'X-Team': 'blue'" in shown and "'Authorization': '[REDACTED]'" in shown
    assert "prices=['m']" in shown and "default_endpoints={'chat': 'chat', 'embeddings': 'local-embed'}" in shown


def test_settings_cannot_be_changed_after_they_are_read(place):
    settings = read_settings()
    with pytest.raises(AttributeError):
        settings.prices = {}
    with pytest.raises(TypeError):
        settings.endpoints["x"] = settings.endpoints["local-chat"]
