"""Registering aiquery's SQL functions onto a DuckDB connection the caller owns."""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping
from importlib import resources
from typing import Any

import duckdb
import orjson
from duckdb import sqltypes

from . import _process
from ._cache import ResponseCache, open_cache
from ._calls import call_for, lookup
from ._config import DEFAULT_CHAT_ENDPOINT, DEFAULT_CLASSIFY_ENDPOINT, Endpoint, Settings, read_settings
from ._datasets import dataset_path
from . import _manyrow
from ._calls import Call
from ._engine import Engine
from ._query import Query
from ._options import Options, read_options
from ._providers import Target, resolve
from ._readahead import ReadAhead
from ._tasks import task_part
from ._errors import ArgumentError
from ._progress import Progress, interactive, query_status
from ._sqltypes import ddl_to_duckdb_sql, sql_string
from ._udf import make_udf
from ._usage import Price, endpoint_rows, price_of, query_rows

UDF_PARAMETERS = [sqltypes.VARCHAR, sqltypes.VARCHAR, sqltypes.VARCHAR, sqltypes.BLOB, sqltypes.VARCHAR,
                  sqltypes.UBIGINT, sqltypes.UBIGINT]
MACRO_FILES = ("options.sql", "ai_query.sql", "usage.sql", "datasets.sql", "functions.sql", "manyrow.sql")
READAHEAD_FILES = ("options.sql", "readahead.sql", "functions.sql", "readahead_functions.sql")
_MACRO = re.compile(r"CREATE OR REPLACE TEMP MACRO (\w+)\((.*)", re.S)


def _sql_files(*files: str) -> str:
    text = "\n".join(resources.files("aiquery").joinpath(f"sql/{name}").read_text() for name in files)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(";") if s.strip()]


def function_names(number: int) -> dict[str, str]:
    """The names of one registration's Python functions, by their placeholder in the SQL files.
    Numbered: two connections to one database file share its catalog of Python functions."""
    return {"$INVOKE_UDF": f"__aiquery_invoke_{number}", "$USAGE_UDF": f"__aiquery_usage_{number}",
            "$DATASET_UDF": f"__aiquery_dataset_{number}", "$TASK_UDF": f"__aiquery_task_{number}",
            **_manyrow.function_names(number)}


def render_macros(files: tuple[str, ...], names: Mapping[str, str], embedding_endpoints: list[str],
                  default_endpoints: Mapping[str, str]) -> str:
    """aiquery's SQL functions as TEMP macros, every placeholder filled in but $CONTEXT (the
    number of the connection or cursor they are created on, see aiquery/_process.py)."""
    text = _sql_files(*files)
    for placeholder, name in names.items():
        text = text.replace(placeholder, name)
    text = text.replace("$EMBEDDING_ENDPOINTS",
                        "[" + ", ".join(sql_string(n) for n in sorted(embedding_endpoints)) + "]::VARCHAR[]")
    chat = default_endpoints["chat"]
    text = text.replace("$DEFAULT_CLASSIFY_ENDPOINT",  # a configured chat default serves ai_classify too
                        sql_string(DEFAULT_CLASSIFY_ENDPOINT if chat == DEFAULT_CHAT_ENDPOINT else chat))
    text = text.replace("$DEFAULT_CHAT_ENDPOINT", sql_string(chat))
    text = text.replace("$DEFAULT_EMBEDDING_ENDPOINT", sql_string(default_endpoints["embeddings"]))
    return re.sub(r"\$DDL\(([^)]*)\)", lambda m: ddl_to_duckdb_sql(m.group(1)), text)


def site_functions(macros: str) -> frozenset[str]:
    """ai_query and the public macros that call it, directly or through another: the calls the
    read-ahead planner looks for (aiquery/_planner.py)."""
    bodies = {m.group(1): m.group(2) for m in map(_MACRO.match, _split(macros)) if m}
    sites = {"ai_query"}
    while True:
        more = {name for name, body in bodies.items() if not name.startswith("__") and name not in sites
                and any(re.search(rf"\b{site}\(", body) for site in sites)}
        if not more:
            return frozenset(sites)
        sites |= more


class Registration:
    """What one connection's aiquery functions use: its settings (endpoints, prices, allowed hosts,
    default endpoints, and the file they were read from), the engine, the response cache, its macros
    and Python functions' names, its read-ahead, and the progress lines of its queries. Built
    complete by register(); a connection or cursor reaches it through its Context (aiquery/_process.py)."""

    def __init__(self, settings: Settings, engine: Engine, cache: ResponseCache | None,
                 connection: duckdb.DuckDBPyConnection, readahead_macros: list[str],
                 macros: str, sites: frozenset[str], progress: bool = False):
        self.settings = settings
        self.engine = engine
        self._cache = cache
        self.estimator: Any = None  # set by aiquery/_estimate.py while it estimates
        self.progress = progress    # show each query's progress
        self.readahead = ReadAhead(connection, readahead_macros, sites, self.build)
        self._options: dict[str, Options] = {}
        self._targets: dict[str, Target] = {}
        self._params: dict[tuple[str, str], dict] = {}  # endpoint defaults merged with modelParameters
        self._macros = macros  # rendered once; each connection or cursor fills in its number
        self.function_names: dict[str, str] = {}
        self.displays: weakref.WeakSet = weakref.WeakSet()  # progress lines of running queries

    def settle_displays(self, timeout: float = 2.0) -> None:
        """Waits until the progress lines of queries that have ended are closed (before printing after them)."""
        for display in list(self.displays):
            display.wait(timeout)

    def macros(self, context: int) -> list[str]:
        """The TEMP macros of aiquery's SQL functions for the connection or cursor numbered `context`."""
        return [s.strip() for s in self._macros.replace("$CONTEXT", str(context)).split(";") if s.strip()]

    @property
    def endpoints(self) -> Mapping[str, Endpoint]:
        return self.settings.endpoints

    @property
    def prices(self) -> Mapping[str, Price]:
        return self.settings.prices

    @property
    def cache(self) -> ResponseCache | None:
        """The connection's response cache, opened again if it was closed (by _cache.close_all())."""
        if self._cache is not None and self._cache.closed:
            self._cache = open_cache(self._cache.path)
        return self._cache

    def options(self, text: str) -> Options:
        opts = self._options.get(text)
        if opts is None:
            opts = read_options(text)
            if len(self._options) >= 1024:  # per-row options (a column of modelParameters): keep it bounded
                self._options.clear()
                self._params.clear()
            self._options[text] = opts
        return opts

    def prebuilt(self, name: Any, request: str, options: str, image: bytes | None) -> tuple[Endpoint, Options, Call]:
        """build(), taking the call the read-ahead built for these arguments when there is one."""
        call = self.readahead.take((name, request, options, image))
        if call is None:
            return self.build(name, request, options, image)
        return call.endpoint, self.options(options), call

    def build(self, name: Any, request: str, options: str, image: bytes | None) -> tuple[Endpoint, Options, Call]:
        """The call for one row (request and options as the JSON texts the macros produce)."""
        opts = self.options(options)
        endpoint = lookup(self.endpoints, name)
        target = self._targets.get(name)
        if target is None:  # read when first used, so a key exported after connect() is found
            target = self._targets[name] = self.engine.shared_auth(resolve(endpoint, self.settings.allowed_hosts))
        params = self._params.get((name, options))
        if params is None:  # what every body of this endpoint and these options carries
            model = {"model": endpoint.model} if target.sends_model and endpoint.model else {}
            params = self._params[(name, options)] = {**model, **endpoint.model_parameters, **opts.params}
        call = call_for(endpoint, target, orjson.loads(request), opts, params, image)
        call.price = price_of(endpoint.model, self.prices)
        call.batch = opts.batch if opts.batch is not None else endpoint.batch
        if call.batch and (endpoint.provider != "openai" or endpoint.task == "custom"):
            raise ArgumentError(f"batch => true: endpoint {endpoint.name!r} ({endpoint.provider}, {endpoint.task}) "
                                "has no batch API; batch mode needs an OpenAI-compatible chat, completions or "
                                "embeddings endpoint")
        if opts.cache if opts.cache is not None else endpoint.cache:
            call.cache = self.cache
        return endpoint, opts, call

    def start_query(self, context: int, statement: str, txid: int, window: int) -> Query:
        """The engine's record of this query, entered (the caller calls query.leave() when its batch
        returns); starts reading ahead when the query allows it."""
        place = _process.context_by_number(context)
        query, created = self.engine.query((context, txid, statement), window,
                                           place.running if place is not None and place.tracked else None)
        try:
            if created and place is not None and place.interrupted(txid):
                self.engine.cancel(lambda identity: identity == query.identity)  # interrupted before its first batch
            if created and place is not None and place.tracked:
                query.progress = place.fraction
            if created and self.progress:
                self.displays.add(Progress(lambda: query_status(query, self.prices), done=query.ended))
            if created and window > 0:
                self.readahead.start(query, statement, place, self.engine)
            elif created:
                query.read_ahead = "no: the endpoint's lookahead setting is 0"
        except BaseException:
            query.leave()
            raise
        return query



def register(con: duckdb.DuckDBPyConnection, *, endpoints: Mapping[str, Any] | None = None,
             config: str | os.PathLike | bool | None = None, engine: Engine | None = None,
             cache: str | os.PathLike | bool = True, progress: bool | None = None,
             default_chat_endpoint: str | None = None,
             default_embedding_endpoint: str | None = None) -> duckdb.DuckDBPyConnection:
    """Registers ai_query on `con` (replacing an earlier registration) and returns `con`.

    Requests go through `engine`, by default the process-wide Engine.shared(), so an endpoint's
    limits hold across every connection. Answers are kept in the response cache: `cache` is its
    file (default: responses.sqlite3 in $AIQUERY_CACHE_DIR or the user cache directory), or False.
    `progress` shows each query's progress: by default in a terminal or notebook (AIQUERY_PROGRESS=0: never).
    The task functions (ai_gen, ai_classify, ai_similarity, ...) called without `endpoint =>` use
    `default_chat_endpoint` / `default_embedding_endpoint`, else the config file's, else the built-in models.

    Settings are read once, from one file: `config` (False: none), else $AIQUERY_CONFIG, else
    ./aiquery.toml if present; `endpoints` are layered on the file's (see aiquery/_config.py read_settings)."""
    if not isinstance(con, duckdb.DuckDBPyConnection):
        raise TypeError(f"register() needs a duckdb connection, got {type(con).__name__}")
    settings = read_settings(config, endpoints, default_chat_endpoint, default_embedding_endpoint)
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise TypeError(f"cache must be True, False or the path of a cache file, got {type(cache).__name__}")
    responses = None if cache is False else open_cache(None if cache is True else cache)
    engine = engine or Engine.shared()
    number = next(_process.numbers)
    names = function_names(number)
    embedding = [name for name, e in settings.endpoints.items() if e.task == "embeddings"]
    defaults = settings.default_endpoints
    macros = render_macros(MACRO_FILES, names, embedding, defaults)
    registration = Registration(settings, engine, responses, con,
                                _split(render_macros(READAHEAD_FILES, names, embedding, defaults)), macros,
                                site_functions(macros), interactive() if progress is None else progress)
    earlier = _process.context_of(con)
    install(con, registration, names, earlier.registration.function_names if earlier else None)
    registration.function_names = names
    _process.attach(con, registration)
    return con


def registration_of(con: duckdb.DuckDBPyConnection) -> Registration:
    context = _process.context_of(con)
    if context is None:
        raise ArgumentError("this connection has no aiquery functions: make it with aiquery.connect() "
                            "or call aiquery.register(con) first")
    return context.registration


def install(con: duckdb.DuckDBPyConnection, registration: Registration, names: Mapping[str, str],
            earlier: Mapping[str, str] | None) -> None:
    """Creates the Python functions of `registration` on `con`, removing those of an earlier
    registration on it (`earlier`: their names); the macros come with the context (aiquery/_process.py)."""
    for name in (earlier or {}).values():
        con.remove_function(name)
    engine, prices = registration.engine, registration.prices
    con.create_function(names["$INVOKE_UDF"], make_udf(registration), UDF_PARAMETERS, sqltypes.VARCHAR,
                        type="arrow", null_handling="special", side_effects=True)
    # Foldable (no side effects) so that it can name a file: read_parquet(aiquery_dataset('...')).
    con.create_function(names["$DATASET_UDF"], dataset_path, [sqltypes.VARCHAR], sqltypes.VARCHAR, side_effects=False)
    # Folded while planning too: the task functions' column types come from it (aiquery/_tasks.py).
    con.create_function(names["$TASK_UDF"], task_part, [sqltypes.VARCHAR] * 5, sqltypes.VARCHAR, side_effects=False,
                        null_handling="special")

    def usage(kind: str) -> str:
        rows = (endpoint_rows(engine, prices) if kind == "endpoints" else
                query_rows(engine, prices, lambda query: query_status(query, prices)))
        return orjson.dumps(rows).decode()

    con.create_function(names["$USAGE_UDF"], usage, [sqltypes.VARCHAR], sqltypes.VARCHAR, side_effects=True)
    _manyrow.install(con, registration, names)


def connect(database: str = ":memory:", *, endpoints: Mapping[str, Any] | None = None,
            config: str | os.PathLike | bool | None = None, engine: Engine | None = None,
            cache: str | os.PathLike | bool = True, progress: bool | None = None,
            default_chat_endpoint: str | None = None, default_embedding_endpoint: str | None = None,
            **duckdb_options: Any) -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with every aiquery SQL function registered (see register())."""
    con = duckdb.connect(database, **duckdb_options)
    try:
        return register(con, endpoints=endpoints, config=config, engine=engine, cache=cache, progress=progress,
                        default_chat_endpoint=default_chat_endpoint,
                        default_embedding_endpoint=default_embedding_endpoint)
    except BaseException:
        con.close()
        raise
