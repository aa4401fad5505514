"""ai_query in Spark SQL (aiquery.spark), PySpark in local[2] against the fake server: the same rows as
DuckDB, the endpoint's limit held by all workers together, and Spark's result types."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

import aiquery
import aiquery.spark
from conftest import CANARY_KEY
from fakeserver import FakeServer

pytestmark = [pytest.mark.slow,  # a Spark session (a JVM) and its Python workers
              pytest.mark.skipif(shutil.which("java") is None,
                                 reason="PySpark needs Java 17 (Debian: apt-get install openjdk-17-jre-headless)")]

ROWS = 300


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # The workers inherit the environment of the moment the session starts: the key, and this Python.
    saved = {name: os.environ.get(name) for name in ("FAKE_KEY", "PYSPARK_PYTHON")}
    os.environ.update(FAKE_KEY=CANARY_KEY, PYSPARK_PYTHON=sys.executable)
    session = (SparkSession.builder.master("local[2]").appName("aiquery-tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    session.sparkContext.setLogLevel("OFF")
    session.createDataFrame(
        [(i, None if i % 50 == 7 else f"row {i}") for i in range(ROWS)], "id INT, prompt STRING",
    ).repartition(4).createOrReplaceTempView("prompts")
    yield session
    session.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _settings(server: FakeServer, **chat) -> dict:
    openai = {"provider": "openai", "base_url": server.openai_base, "api_key_env": "FAKE_KEY"}
    return {"chat": {**openai, "task": "chat", "model": "fake-chat", **chat},
            "embed": {**openai, "task": "embeddings", "model": "fake-embed", "batch_size": 4}}


@pytest.fixture
def served(spark, monkeypatch):
    """A fresh fake server, and the Spark functions registered against it (no cache)."""
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    with FakeServer(api_key=CANARY_KEY) as server:
        settings = _settings(server)
        aiquery.spark.register(spark, endpoints=settings, cache=False)
        yield server, settings


def _duckdb_rows(settings: dict, sql: str) -> list[tuple]:
    """The rows of `sql` in DuckDB, over the same prompts, sorted by id. (Spark's queries here have no
    ORDER BY: sorting samples its input first, which evaluates ai_query twice; see the README.)"""
    with aiquery.connect(endpoints=settings, cache=False) as con:
        con.execute(f"CREATE TABLE prompts AS SELECT i::INT AS id, CASE WHEN i % 50 = 7 THEN NULL "
                    f"ELSE 'row ' || i END AS prompt FROM range({ROWS}) t(i)")
        return sorted(con.sql(sql).fetchall())


def test_ai_query_gives_the_same_rows_as_in_duckdb(spark, served):
    server, settings = served
    sql = "SELECT id, ai_query('chat', prompt) AS answer FROM prompts"
    result = spark.sql(sql)
    assert result.schema["answer"].dataType.simpleString() == "string"
    in_spark = sorted(tuple(row) for row in result.collect())
    assert len(server.bodies("/chat/completions")) == ROWS - ROWS // 50  # NULL prompts send nothing
    assert in_spark == _duckdb_rows(settings, sql)
    assert in_spark[7] == (7, None) and in_spark[8] == (8, "echo: row 8")


def test_all_workers_together_stay_within_the_endpoints_limit(spark, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    with FakeServer(api_key=CANARY_KEY, latency=0.05) as server:
        aiquery.spark.register(spark, endpoints=_settings(server, max_concurrency=8), cache=False)
        answers = spark.sql("SELECT ai_query('chat', prompt) AS a FROM prompts WHERE prompt IS NOT NULL").collect()
        assert len(answers) == ROWS - ROWS // 50
        assert 4 < server.peak_in_flight <= 8  # two workers of 4 each, both busy at once


def test_try_ai_query_is_duckdbs_failonerror_false_struct(spark, served):
    server, settings = served
    prompt = "prompt || CASE WHEN id % 10 = 3 THEN ' [[status=400]]' ELSE '' END"
    result = spark.sql(f"SELECT id, try_ai_query('chat', {prompt}) AS r FROM prompts")
    assert result.schema["r"].dataType.simpleString() == "struct<response:string,errorMessage:string>"
    in_spark = sorted((row.id, None if row.r is None else (row.r.response, row.r.errorMessage))
                      for row in result.collect())
    in_duckdb = _duckdb_rows(settings, f"SELECT id, ai_query('chat', {prompt}, failOnError => false) AS r "
                                       "FROM prompts")
    assert in_spark == [(i, None if r is None else (r["response"], r["errorMessage"])) for i, r in in_duckdb]
    failed = in_spark[3][1]
    assert failed[0] is None and "endpoint 'chat': HTTP 400" in failed[1]


def test_a_struct_response_format_is_typed_with_from_json(spark, served):
    server, settings = served
    schema = "STRUCT<label: STRING, score: DOUBLE>"
    result = spark.sql(f"SELECT id, from_json(ai_query('chat', prompt, responseFormat => '{schema}'), "
                       "'label STRING, score DOUBLE') AS r FROM prompts WHERE id < 20 ")
    assert result.schema["r"].dataType.simpleString() == "struct<label:string,score:double>"
    in_spark = sorted((row.id, None if row.r is None else row.r.asDict()) for row in result.collect())
    in_duckdb = _duckdb_rows(settings, f"SELECT id, ai_query('chat', prompt, responseFormat => '{schema}') "
                                       "FROM prompts WHERE id < 20 ")
    assert in_spark == in_duckdb and in_spark[0][1] is not None
    sent = server.bodies("/chat/completions")[0]["response_format"]
    assert sent["type"] == "json_schema"


def test_ai_embed_returns_the_same_float_arrays_as_duckdb(spark, served):
    server, settings = served
    result = spark.sql("SELECT id, ai_embed(prompt, 'embed') AS v FROM prompts WHERE id < 40 ")
    assert result.schema["v"].dataType.simpleString() == "array<float>"
    in_spark = sorted((row.id, row.v) for row in result.collect())
    in_duckdb = _duckdb_rows(settings, "SELECT id, ai_query('embed', prompt) FROM prompts WHERE id < 40 ")
    assert in_spark == [(i, None if v is None else pytest.approx(v)) for i, v in in_duckdb]
    assert len(in_spark[0][1]) > 1


def test_named_arguments_and_model_parameters_reach_the_server(spark, served):
    server, _ = served
    rows = spark.sql("SELECT ai_query(endpoint => 'chat', request => prompt, failOnError => true, "
                     "modelParameters => named_struct('max_tokens', 7, 'temperature', 0.5)) AS a "
                     "FROM prompts WHERE id < 5").collect()
    assert sorted(r.a for r in rows) == [f"echo: row {i}" for i in range(5)]
    bodies = server.bodies("/chat/completions")
    assert len(bodies) == 5 and all(b["max_tokens"] == 7 and b["temperature"] == 0.5 for b in bodies)


@pytest.mark.parametrize("sql, says", [
    ("SELECT ai_query('chat', prompt, failOnError => false) FROM prompts",
     "use try_ai_query(...) for STRUCT<response, errorMessage>"),
    ("SELECT ai_query('embed', prompt) FROM prompts", "use ai_embed(text, 'embed') for ARRAY<FLOAT>"),
    ("SELECT ai_query('chta', prompt) FROM prompts", "'chta'"),
    ("SELECT ai_query(prompt, prompt) FROM prompts", "endpoint must be a constant"),
])
def test_a_call_spark_cannot_type_or_run_says_what_to_do(spark, served, sql, says):
    from pyspark.errors import PythonException

    server, _ = served
    with pytest.raises(PythonException) as raised:
        spark.sql(sql).collect()
    assert says in str(raised.value)
    assert server.bodies("/chat/completions") == []


def test_the_settings_spark_carries_hold_no_key(spark, served):
    carried = spark.conf.get(aiquery.spark.SETTINGS_CONF)
    assert "FAKE_KEY" in carried and CANARY_KEY not in carried


def test_workers_use_the_file_the_driver_read_and_no_other(spark, tmp_path, monkeypatch):
    """endpoints= on top of the file named by $AIQUERY_CONFIG on the driver: the workers (whose
    environment was fixed when the session started) take its default_chat_endpoint too."""
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    with FakeServer(api_key=CANARY_KEY) as server:
        config = tmp_path / "driver.toml"
        config.write_text('default_chat_endpoint = "chat"\n')
        monkeypatch.setenv("AIQUERY_CONFIG", str(config))
        aiquery.spark.register(spark, endpoints=_settings(server), cache=False)
        answers = spark.sql("SELECT ai_gen(prompt) AS a FROM prompts WHERE id < 5").collect()
        assert len(answers) == 5 and len(server.bodies("/chat/completions")) == 5  # not the built-in local-chat
        assert json.loads(spark.conf.get(aiquery.spark.SETTINGS_CONF))["config"] == str(config)
        monkeypatch.delenv("AIQUERY_CONFIG")
        monkeypatch.chdir(tmp_path)  # no file at all: the workers read none of their own either
        aiquery.spark.register(spark, endpoints=_settings(server), cache=False)
        assert json.loads(spark.conf.get(aiquery.spark.SETTINGS_CONF))["config"] is False
