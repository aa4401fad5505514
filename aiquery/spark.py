"""ai_query in Spark SQL: `aiquery.spark.register(spark)` (pip install 'aiquery[spark]').

The functions are Arrow UDFs. Each Python worker evaluates a batch by running the DuckDB function of
the same name over it in a DuckDB connection of its own (aiquery.connect), so arguments, requests,
retries, limits, parsing and the response cache are exactly those of DuckDB's ai_query. Spark reuses
its Python workers, and the connection (with its engine) lives as long as the worker.

The settings reach the workers in the Spark conf `spark.aiquery.settings`: the endpoints (names of
the variables holding keys, never keys; a worker reads the key from its own environment), the path
of the one settings file the driver read (prices, allowed_hosts and defaults come from it; with no
file, workers read none of their own), and the cache. Each endpoint's max_concurrency is divided
among `workers` (by default the session's default parallelism, the number of tasks it runs at
once), so all workers together stay within the endpoint's limit.

Spark gives a function one return type, where DuckDB picks it per call, so the shapes have names:
ai_query returns STRING (a responseFormat or returnType answer as JSON text), try_ai_query returns
STRUCT<response STRING, errorMessage STRING> (DuckDB's failOnError => false), and ai_embed returns
ARRAY<FLOAT>. A STRUCT responseFormat is typed with from_json in SQL (README, "Scaling out with Spark").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pyarrow as pa

from . import _process
from ._config import SETTING_NAMES, read_settings
from ._errors import ArgumentError
from ._sqltypes import sql_string

SETTINGS_CONF = "spark.aiquery.settings"


def register(spark: Any, *, endpoints: Mapping[str, Any] | None = None, config: str | os.PathLike | bool | None = None,
             cache: str | os.PathLike | bool = True, workers: int | None = None) -> None:
    """Registers ai_query, try_ai_query, ai_embed, ai_similarity and the text task functions in `spark`.

    `endpoints` and `config` are those of aiquery.connect(); the config file must be readable by the
    workers at the same path. `cache` is True (each machine's default cache file, shared by its
    workers), False, or the path of a cache file. `workers` is how many Python workers run at once
    across the cluster; each endpoint's max_concurrency is divided by it."""
    from pyspark.sql.functions import arrow_udf

    settings = read_settings(config, endpoints)  # checked here, on the driver, before any task runs
    workers = spark.sparkContext.defaultParallelism if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ArgumentError(f"aiquery.spark.register: workers must be a positive integer, got {workers!r}")
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise TypeError(f"cache must be True, False or the path of a cache file, got {type(cache).__name__}")
    shared = {name: _worker_settings(endpoint, workers) for name, endpoint in settings.endpoints.items()}
    spark.conf.set(SETTINGS_CONF, json.dumps({  # the workers read the driver's file (or none), not their own
        "endpoints": shared, "config": False if settings.path is None else str(settings.path),
        "cache": cache if isinstance(cache, bool) else os.path.abspath(cache)}))
    for function, returns in _FUNCTIONS.items():
        spark.udf.register(function.__name__, arrow_udf(function, returns))


def _worker_settings(endpoint: Any, workers: int) -> dict[str, Any]:
    plain = {name: getattr(endpoint, name) for name in SETTING_NAMES}
    plain["model_parameters"], plain["headers"] = dict(endpoint.model_parameters), dict(endpoint.headers)
    plain["max_concurrency"] = max(1, endpoint.max_concurrency // workers)
    return plain


def _connection() -> Any:
    """This worker's DuckDB connection for the settings of the running Spark job."""
    from pyspark import TaskContext

    import aiquery

    context = TaskContext.get()
    state = context.getLocalProperty(SETTINGS_CONF) if context is not None else None
    if state is None:
        raise ArgumentError("aiquery's Spark functions have no settings in this job: "
                            "call aiquery.spark.register(spark) on the session that runs the query")
    con = _process.spark_connections.get(state)
    if con is None:
        settings = json.loads(state)
        con = _process.spark_connections[state] = aiquery.connect(endpoints=settings["endpoints"], config=settings["config"],
                                                    cache=settings["cache"], progress=False)
    return con


def _literal(value: Any) -> str:
    """A DuckDB literal for a constant argument (a named_struct arrives as a dict)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):  # Spark types 0.5 as DECIMAL(1,1)
        return str(value)
    if isinstance(value, str):
        return sql_string(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{sql_string(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise ArgumentError(f"a constant of type {type(value).__name__} cannot be passed on to DuckDB")


def _constant(function: str, name: str, array: pa.Array) -> Any:
    """The one value of an argument that must be the same on every row (Spark passes a literal as a
    column)."""
    values = array.to_pylist()
    if any(v != values[0] for v in values):
        raise ArgumentError(f"{function}: {name} must be a constant (a literal), the same for every row")
    return values[0] if values else None


def _run(function: str, positional: list[tuple[str, pa.Array, bool]], named: Mapping[str, pa.Array | None],
         fixed: Mapping[str, Any] = {}) -> pa.Array:
    """DuckDB's `function` over one batch. `positional` holds (name, array, varies by row);
    `named` holds the optional arguments given, all constants; `fixed` the ones the Spark function sets."""
    columns = {name: array for name, array, varies in positional if varies}
    args = [name if varies else _literal(_constant(function, name, array)) for name, array, varies in positional]
    args += [f"{name} := {_literal(_constant(function, name, array))}" for name, array in named.items()
             if array is not None]
    args += [f"{name} := {_literal(value)}" for name, value in fixed.items()]
    relation = _connection().from_arrow(pa.table(columns))
    return relation.project(f"{function}({', '.join(args)}) AS answer").to_arrow_table().column("answer").combine_chunks()


def _as_text(answers: pa.Array, function: str, endpoint: pa.Array) -> pa.Array:
    """STRING as Spark declares it: a typed answer (returnType, responseFormat) as its JSON text."""
    if pa.types.is_string(answers.type) or pa.types.is_large_string(answers.type):
        return answers
    if pa.types.is_list(answers.type) and pa.types.is_floating(answers.type.value_type):
        name = _constant(function, "endpoint", endpoint)
        raise ArgumentError(f"endpoint {name!r} is an embeddings endpoint and {function} returns STRING in Spark: "
                            f"use ai_embed(text, {name!r}) for ARRAY<FLOAT>")
    relation = _connection().from_arrow(pa.table({"answer": answers}))
    return relation.project("to_json(answer)::VARCHAR AS answer").to_arrow_table().column("answer").combine_chunks()


def ai_query(endpoint: pa.Array, request: pa.Array, returnType: pa.Array = None, failOnError: pa.Array = None,
             modelParameters: pa.Array = None, responseFormat: pa.Array = None) -> pa.Array:
    if failOnError is not None and _constant("ai_query", "failOnError", failOnError) is False:
        raise ArgumentError("ai_query returns STRING in Spark, which has no room for the error: "
                            "use try_ai_query(...) for STRUCT<response, errorMessage> (failOnError => false)")
    answers = _run("ai_query", [("endpoint", endpoint, False), ("request", request, True)],
                   {"returnType": returnType, "modelParameters": modelParameters, "responseFormat": responseFormat})
    return _as_text(answers, "ai_query", endpoint)


def try_ai_query(endpoint: pa.Array, request: pa.Array, returnType: pa.Array = None, modelParameters: pa.Array = None,
                 responseFormat: pa.Array = None) -> pa.Array:
    answers = _run("ai_query", [("endpoint", endpoint, False), ("request", request, True)],
                   {"returnType": returnType, "modelParameters": modelParameters, "responseFormat": responseFormat},
                   fixed={"failOnError": False})
    response = _as_text(answers.field("response"), "try_ai_query", endpoint)
    return pa.StructArray.from_arrays([response, answers.field("errorMessage")], names=["response", "errorMessage"],
                                      mask=answers.is_null())


def ai_embed(content: pa.Array, endpoint: pa.Array = None, modelParameters: pa.Array = None) -> pa.Array:
    return _run("ai_embed", [("content", content, True)], {"endpoint": endpoint, "modelParameters": modelParameters})


def ai_similarity(a: pa.Array, b: pa.Array, endpoint: pa.Array = None, modelParameters: pa.Array = None) -> pa.Array:
    return _run("ai_similarity", [("a", a, True), ("b", b, True)],
                {"endpoint": endpoint, "modelParameters": modelParameters})


def ai_gen(prompt: pa.Array, endpoint: pa.Array = None, modelParameters: pa.Array = None) -> pa.Array:
    return _run("ai_gen", [("prompt", prompt, True)], {"endpoint": endpoint, "modelParameters": modelParameters})


def ai_summarize(content: pa.Array, max_words: pa.Array = None, endpoint: pa.Array = None,
                 modelParameters: pa.Array = None) -> pa.Array:
    return _run("ai_summarize", [("content", content, True)],
                {"max_words": max_words, "endpoint": endpoint, "modelParameters": modelParameters})


def ai_translate(content: pa.Array, to_lang: pa.Array, endpoint: pa.Array = None,
                 modelParameters: pa.Array = None) -> pa.Array:
    return _run("ai_translate", [("content", content, True), ("to_lang", to_lang, False)],
                {"endpoint": endpoint, "modelParameters": modelParameters})


def ai_analyze_sentiment(content: pa.Array, endpoint: pa.Array = None, modelParameters: pa.Array = None) -> pa.Array:
    return _run("ai_analyze_sentiment", [("content", content, True)],
                {"endpoint": endpoint, "modelParameters": modelParameters})


def ai_classify(content: pa.Array, labels: pa.Array, endpoint: pa.Array = None,
                modelParameters: pa.Array = None) -> pa.Array:
    return _run("ai_classify", [("content", content, True), ("labels", labels, False)],
                {"endpoint": endpoint, "modelParameters": modelParameters})


_FUNCTIONS = {
    ai_query: "string", try_ai_query: "struct<response: string, errorMessage: string>", ai_embed: "array<float>",
    ai_similarity: "float", ai_gen: "string", ai_summarize: "string", ai_translate: "string",
    ai_analyze_sentiment: "string", ai_classify: "string",
}
