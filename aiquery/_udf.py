"""The Python side of ai_query: one Arrow batch of rows in, one JSON text per row out.

The SQL macro (aiquery/sql/ai_query.sql) packs the constant arguments into one JSON `options`
string and turns this function's JSON answer into the typed column (VARCHAR, FLOAT[], a STRUCT)
with json_transform_strict. Here: read the arguments, build one request per row, let the engine
send them, and check each answer against the requested type.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from . import _process, _wire
from ._cache import ResponseCache, open_cache
from ._config import BATCH_LOOKAHEAD, PREFIX_CHARS, Endpoint
from ._engine import Call, Engine, Query
from ._errors import AIQueryError, ArgumentError, ConfigError, OutputError, UnknownEndpointError
from ._planner import Plan, plan
from ._readahead import Prefetcher
from ._providers import Target, resolve
from ._tasks import Spec, spec
from ._types import SqlType, check_enums, conform, parse_output, parse_type
from ._progress import Progress, query_status
from ._scrub import printable, shorten
from ._usage import Price, price_of

_FORMAT_TYPES = ("text", "json_object", "json_schema")
MAX_PREBUILT = 100_000


@dataclass(frozen=True)
class Options:
    """The constant arguments of one ai_query call, read once per batch."""

    params: dict[str, Any]
    fail_on_error: bool
    response_format: dict[str, Any] | None  # as sent to the model
    output_type: SqlType | None             # what the answer is converted to (returnType or DDL responseFormat)
    expects_json: bool                      # json_object / json_schema: the answer must parse as JSON
    cache: bool | None                      # cache => true/false; None: the endpoint's setting
    details: bool                           # details => true: each row also carries usage and attempts
    normalize: bool | None = None           # normalize => true/false (embeddings); None: the endpoint's setting
    tools: bool = False                     # modelParameters is a STRUCT with `tools`: answers are
                                            # STRUCT(content, tool_calls) (aiquery/sql/options.sql)
    batch: bool | None = None               # batch => true/false; None: the endpoint's setting
    task: Spec | None = None                # ai_classify / ai_extract: the answer is reshaped (aiquery/_tasks.py)


def read_options(text: str) -> Options:
    raw = json.loads(text)
    params = _wire.check_model_parameters(raw.get("modelParameters"))
    fail_on_error = raw.get("failOnError")
    if not isinstance(fail_on_error, bool):
        raise ArgumentError(f"failOnError must be true or false, got {fail_on_error!r}")
    response_format, output_type, expects_json = _response_format(raw.get("responseFormat"))
    return_type = raw.get("returnType")
    if return_type is not None:
        if not isinstance(return_type, str):
            raise ArgumentError(f"returnType must be a type string like 'INT' or 'ARRAY<STRING>', got {return_type!r}")
        output_type = parse_type(return_type, argument="returnType")
    cache = raw.get("cache")
    if cache is not None and not isinstance(cache, bool):
        raise ArgumentError(f"cache must be true or false, got {cache!r}")
    details = raw.get("details")
    if not isinstance(details, bool):
        raise ArgumentError(f"details must be true or false, got {details!r}")
    if details and fail_on_error:
        raise ArgumentError("details => true needs failOnError => false (the details go beside each row's answer)")
    normalize = raw.get("normalize")
    if normalize is not None and not isinstance(normalize, bool):
        raise ArgumentError(f"normalize must be true or false, got {normalize!r}")
    tools = raw.get("tools") is True
    if "tools" in params and not tools:
        raise ArgumentError("modelParameters: tools need modelParameters to be a struct like {'tools': [...]}, "
                            "not a map: DuckDB types the answer as STRUCT(content, tool_calls) from the struct's fields")
    batch = raw.get("batch")
    if batch is not None and not isinstance(batch, bool):
        raise ArgumentError(f"batch must be true or false, got {batch!r}")
    task = raw.get("task")
    if task is not None:  # the arguments the task function's macro passed, as to_json() texts
        task = spec(task["kind"], task["labels"], task["options"], task["multilabel"])
        if task.logprobs:
            params = {**params, "logprobs": True}
    return Options(params, fail_on_error, response_format, output_type, expects_json, cache, details, normalize,
                   tools, batch, task)


def _response_format(value: Any) -> tuple[dict | None, SqlType | None, bool]:
    if value is None:
        return None, None, False
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ArgumentError(f"responseFormat is not valid JSON: {exc}") from None
    if isinstance(value, dict):
        kind = value.get("type")
        if kind not in _FORMAT_TYPES:
            raise ArgumentError(f"responseFormat type must be one of {', '.join(_FORMAT_TYPES)}, got {kind!r}")
        if kind == "json_schema" and not isinstance(value.get("json_schema"), dict):
            raise ArgumentError('responseFormat {"type":"json_schema"} needs a "json_schema" object '
                                'with "name" and "schema"')
        return value, None, kind != "text"
    if not isinstance(value, str):
        raise ArgumentError(f"responseFormat must be a JSON string or a type string, got {value!r}")
    t = parse_type(value, argument="responseFormat")
    if not t.is_struct:
        raise ArgumentError(f"responseFormat {value!r} must be a STRUCT type, e.g. 'STRUCT<label: STRING>'; "
                            "use returnType to convert the answer to another type")
    schema = {"type": "json_schema", "json_schema": {"name": "response", "strict": True, "schema": t.to_json_schema()}}
    return schema, t, True


def _lookup(endpoints: dict[str, Endpoint], name: Any) -> Endpoint:
    if not isinstance(name, str):
        raise ArgumentError("ai_query: endpoint must be a non-NULL string naming a registered endpoint")
    endpoint = endpoints.get(name)
    if endpoint is None:
        known = sorted(endpoints)
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UnknownEndpointError(f"ai_query: unknown endpoint {name!r}.{hint} Registered endpoints: "
                                   f"{', '.join(known) or '(none)'}; add it under [endpoints.{name}] in "
                                   "aiquery.toml or pass endpoints= to aiquery.connect()")
    return endpoint


def _call(endpoint: Endpoint, target: Target, request: Any, options: Options, params: dict,
          image: bytes | None) -> Call:
    if endpoint.task != "chat" and (options.response_format is not None or image is not None or options.tools):
        argument = ("responseFormat" if options.response_format is not None else "files" if image is not None
                    else "modelParameters tools")
        raise ArgumentError(f"{argument} applies to chat endpoints only; endpoint {endpoint.name!r} "
                            f"is a {endpoint.task} endpoint")
    if endpoint.task != "embeddings" and options.normalize:
        raise ArgumentError(f"normalize applies to embeddings endpoints only; endpoint {endpoint.name!r} "
                            f"is a {endpoint.task} endpoint")
    if endpoint.task == "chat":
        body = _wire.chat_body(request, params, options.response_format, [image] if image else [])
    elif endpoint.task == "completions":
        body = _wire.completions_body(request, params)
    elif endpoint.task == "custom":
        body = _wire.custom_body(request, params)
    else:
        if not isinstance(request, str):
            raise ArgumentError(f"request for endpoint {endpoint.name!r} (embeddings) must be a string to embed, "
                            f"got {type(request).__name__}")
        return Call(endpoint, target, params, text=request)
    if endpoint.prompt_cache_key and endpoint.task != "custom" and "prompt_cache_key" not in body:
        body["prompt_cache_key"] = _prompt_cache_key(body)
    return Call(endpoint, target, body)


def _prompt_cache_key(body: dict[str, Any]) -> str:
    """OpenAI's prompt_cache_key: the same for requests whose prompts start with the same
    PREFIX_CHARS characters, so the provider routes them to the machine that has that prefix cached."""
    text = _wire.prompt_text(body)[:PREFIX_CHARS]
    return "aiquery-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _check_enums(value: Any, response_format: dict[str, Any] | None) -> None:
    """A json_schema responseFormat's values with an `enum` hold only the values listed."""
    if response_format and response_format.get("type") == "json_schema":
        check_enums(value, (response_format.get("json_schema") or {}).get("schema"))


def _converted(value: Any, output_type: SqlType | None, options: Options) -> Any:
    """One answer (a text, a vector, a prediction) as the requested type."""
    if output_type is not None:
        converted = parse_output(value, output_type) if isinstance(value, str) else conform(value, output_type)
        _check_enums(converted, options.response_format)
        return converted
    if options.expects_json:
        try:
            parsed = json.loads(value)
        except ValueError:
            raise OutputError(f"the answer is not the JSON responseFormat asked for: {value[:200]!r}") from None
        _check_enums(parsed, options.response_format)
    return value


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for call in calls:
        try:
            json.loads(call["arguments"])
        except ValueError:
            raise OutputError(f"the model called tool {call['name']!r} with arguments that are not JSON: "
                              f"{call['arguments'][:200]!r}") from None
    return calls


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    if not norm or not math.isfinite(norm):
        raise OutputError(f"normalize => true: a vector of length {norm} cannot be scaled to unit length")
    return [x / norm for x in vector]


def _value(endpoint: Endpoint, answer: _wire.Answer, options: Options) -> Any:
    """The answer as a JSON-ready value of the column's type. With n > 1 (a list of answers), an
    ARRAY returnType gets every choice, each converted to its element type; otherwise the first."""
    value, output_type = answer.value, options.output_type
    try:
        if options.task is not None:  # with n > 1 choices, the first, as for other answers
            return options.task.answer(value[0] if isinstance(value, list) else value, answer.logprobs)
        if endpoint.task == "embeddings" and (options.normalize if options.normalize is not None
                                              else endpoint.normalize):
            value = _unit(value)
        if options.tools:
            if not isinstance(value, dict):  # {'tools': NULL} on this row: nothing offered, a text answer
                value = {"content": value[0] if isinstance(value, list) else value, "tool_calls": []}
            content = value["content"]
            return {"content": None if content is None else _converted(content, output_type, options),
                    "tool_calls": _tool_calls(value["tool_calls"])}
        if endpoint.task in ("chat", "completions") and isinstance(value, list):  # n > 1 choices
            if output_type is not None and output_type.kind in ("list", "array"):
                return conform([_converted(v, output_type.element, options) for v in value], output_type)
            value = value[0]
        value = _converted(value, output_type, options)
        if endpoint.task == "custom" and output_type is None and not isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
    except RecursionError:  # json.loads or json.dumps, or a check walking what they made
        raise OutputError(f"endpoint {endpoint.name!r}: the answer is JSON nested too deeply to read") from None
    except OutputError as exc:
        cut = (" The answer was cut off at the token limit (finish_reason 'length'): raise max_tokens."
               if answer.finish_reason == "length" else "")
        raise OutputError(f"endpoint {endpoint.name!r}: {printable(str(exc))}{cut}") from None
    return value


def _row(value: Any, outcome: _wire.Answer | AIQueryError, options: Options) -> dict[str, Any]:
    """A failOnError => false row: the answer or the error, and with details => true how it went."""
    failed = isinstance(outcome, AIQueryError)
    row = {"response": value, "errorMessage": str(outcome) if failed else None}
    if options.details:
        usage = {} if failed else outcome.usage
        row["details"] = {
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "total_tokens": usage.get("total_tokens"), "finish_reason": None if failed else outcome.finish_reason,
            "attempts": getattr(outcome, "attempts", None), "cached": None if failed else outcome.cached,
            "status": getattr(outcome, "status", None) if failed else None,
            "cached_tokens": usage.get("cached_tokens"),
            "batch_id": getattr(outcome, "batch_id", None)}
    return row


class Registration:
    """What one connection's aiquery functions use: its endpoints, the engine, and a way to open
    cursors for reading ahead. The connection is held weakly: it holds this object (through the
    UDF), and a cycle through DuckDB's C++ side would never be collected."""

    def __init__(self, endpoints: dict[str, Endpoint], engine: Engine, cache: ResponseCache | None,
                 prices: dict[str, Price], connection: duckdb.DuckDBPyConnection, readahead_macros: list[str],
                 macros: str, sites: frozenset[str], progress: bool = False):
        self.endpoints = endpoints
        self.engine = engine
        self._cache = cache
        self.prices = prices
        self.estimator: Any = None  # set by aiquery/_estimate.py while it estimates
        self.progress = progress    # show each query's progress
        self.allowed_hosts: list[str] | None = None  # host patterns requests may go to (None: any)
        for endpoint in endpoints.values():
            if (endpoint.budget_usd is not None or endpoint.query_budget_usd is not None) and \
                    price_of(endpoint.model, prices) is None:
                raise ConfigError(f"endpoint {endpoint.name!r}: a USD budget needs the price of model "
                                  f"{endpoint.model!r}: add [prices.{json.dumps(endpoint.model or '')}] with "
                                  "input = and output = (USD per million tokens) to the config file")
        self._connection = weakref.ref(connection)
        self._cursor_lock = threading.Lock()  # a DuckDB connection object is used by one thread at a time
        self.readahead_macros = readahead_macros
        self.sites = sites  # ai_query and the task functions: what the planner reads ahead
        self._plans: dict[str, Plan] = {}
        self._options: dict[str, Options] = {}
        self._targets: dict[str, Target] = {}
        self._params: dict[tuple[str, str], dict] = {}  # endpoint defaults merged with modelParameters
        # Calls the prefetcher built, by the row's raw arguments, so DuckDB's batch need not build
        # them again. An entry is the same call whichever query asks; the bound only caps memory.
        self._prebuilt: dict[tuple, Call] = {}
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

    def build(self, name: Any, request: str, options: str, image: bytes | None) -> tuple[Endpoint, Options, Call]:
        """The call for one row (request and options as the JSON texts the macros produce)."""
        opts = self.options(options)
        endpoint = _lookup(self.endpoints, name)
        target = self._targets.get(name)
        if target is None:  # read when first used, so a key exported after connect() is found
            target = self._targets[name] = self.engine.shared_auth(resolve(endpoint, self.allowed_hosts))
        params = self._params.get((name, options))
        if params is None:  # what every body of this endpoint and these options carries
            model = {"model": endpoint.model} if target.sends_model and endpoint.model else {}
            params = self._params[(name, options)] = {**model, **endpoint.model_parameters, **opts.params}
        call = _call(endpoint, target, orjson.loads(request), opts, params, image)
        call.price = price_of(endpoint.model, self.prices)
        call.batch = opts.batch if opts.batch is not None else endpoint.batch
        if call.batch and (endpoint.provider != "openai" or endpoint.task == "custom"):
            raise ArgumentError(f"batch => true: endpoint {endpoint.name!r} ({endpoint.provider}, {endpoint.task}) "
                                "has no batch API; batch mode needs an OpenAI-compatible chat, completions or "
                                "embeddings endpoint")
        if opts.cache if opts.cache is not None else endpoint.cache:
            call.cache = self.cache
        return endpoint, opts, call

    def prebuilt(self, name: Any, request: str, options: str, image: bytes | None) -> tuple[Endpoint, Options, Call]:
        """build(), taking the call the prefetcher made for these arguments when there is one."""
        call = self._prebuilt.pop((name, request, options, image), None)
        if call is None:
            return self.build(name, request, options, image)
        return call.endpoint, self.options(options), call

    def prefetch_calls(self, rows: list[tuple | None]) -> list[Call]:
        """Calls for rows of a prefetch plan, each (endpoint, request, options, files) as the
        macros produce them; rows that would fail are left for the real query."""
        calls = []
        if len(self._prebuilt) > MAX_PREBUILT:
            self._prebuilt.clear()
        for raw in rows:
            if raw is None or raw[1] is None:
                continue
            try:
                call = self.build(*raw)[2]
            except AIQueryError:
                continue
            self._prebuilt[raw] = call
            calls.append(call)
        return calls

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        connection = self._connection()
        if connection is None:
            raise duckdb.ConnectionException("the connection was closed")
        with self._cursor_lock:
            return _process.raw_cursor(connection)

    def _open_readahead_cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = self._cursor()
        _process.track_progress(cursor)  # how far it is gives the query's total rows (aiquery/_progress.py)
        for statement in self.readahead_macros:
            cursor.execute(statement)
        return cursor

    def plan(self, statement: str, context: _process.Context | None = None, parameters: Any = None) -> Plan:
        """How reading ahead would go for `statement` run on `context` (see aiquery/_planner.py),
        with `parameters` or else the ones it was last executed with there."""
        cached = self._plans.get(statement)
        if cached is not None:
            return cached
        registered = context.registered if context is not None else {}
        if parameters is None and context is not None:
            parameters = context.parameters_of(statement)
        try:
            cursor = self._cursor()
            try:
                result = plan(statement, cursor, self.sites, registered, parameters)
            finally:
                cursor.close()
        except duckdb.Error as exc:
            result = Plan(refusal=f"it could not be planned ({exc})")
        # Objects and parameters are looked up again each time: the names may mean new data.
        if len(self._plans) < 256 and not result.objects and result.parameters is None:
            self._plans[statement] = result
        return result

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
                planned = self.plan(statement, place)
                query.read_ahead = "yes" if planned.reads_ahead else f"no: {planned.refusal}"
                query.source_rows = planned.source_rows
                if not planned.reads_ahead:
                    query.may_read_ahead = False
                else:
                    hold = lambda calls: self.engine.hold(calls, query)  # noqa: E731
                    query.prefetcher = Prefetcher(planned, self._open_readahead_cursor, self.prefetch_calls, hold,
                                                  query.duckdb_turn)
                    query.prefetcher.start()
            elif created:
                query.read_ahead = "no: the endpoint's lookahead setting is 0"
        except BaseException:
            query.leave()
            raise
        return query


def make_udf(registration: Registration):
    """The Arrow UDF __aiquery_invoke_N(endpoint, request, options, files, statement, txid, context)."""
    engine = registration.engine

    def invoke(endpoints: pa.Array, requests: pa.Array, options: pa.Array, files: pa.Array,
               statements: pa.Array, txids: pa.Array, contexts: pa.Array) -> pa.Array:
        n = len(requests)
        names, raw_requests = endpoints.to_pylist(), requests.to_pylist()
        raw_options, images = options.to_pylist(), files.to_pylist()
        out: list[str | None] = [None] * n
        calls: list[Call] = []
        rows: list[tuple[int, Endpoint, Options]] = []
        failures: dict[int, AIQueryError] = {}
        fail_fast = True
        for i in range(n):
            if raw_requests[i] is None:
                continue  # NULL request: NULL answer, nothing sent
            try:
                endpoint, opts, call = registration.prebuilt(names[i], raw_requests[i], raw_options[i], images[i])
            except ArgumentError as exc:  # an argument of this row; settings problems fail the query
                opts = registration.options(raw_options[i])
                if opts.fail_on_error or isinstance(exc, UnknownEndpointError):
                    raise
                failures[i] = exc
                continue
            fail_fast = fail_fast and opts.fail_on_error
            calls.append(call)
            rows.append((i, endpoint, opts))
        if registration.estimator is not None:  # aiquery.estimate(): count what would be sent, send nothing
            registration.estimator.add(calls)
            return pa.array(out, type=pa.string())
        failed_options: dict[int, Options] = {}
        query, answers = None, []
        if calls:
            lookahead = rows[0][1].lookahead  # batch mode reads ahead one batch file's worth of rows
            if lookahead and any(call.batch for call in calls):
                lookahead = max(lookahead, min(BATCH_LOOKAHEAD, rows[0][1].batch_max_requests))
            query = registration.start_query(contexts[0].as_py(), statements[0].as_py(), txids[0].as_py(),
                                             lookahead)
            try:
                if query.prefetcher is not None:
                    query.prefetcher.observe([call.key for call in calls])
                query.rows_seen += len(calls)
                answers = engine.run(calls, fail_fast=fail_fast, query=query)
            finally:
                query.leave()
        try:
            for (i, endpoint, opts), answer in zip(rows, answers):
                if answer is None:
                    continue  # not finished: an earlier row failed and stopped the batch
                if not isinstance(answer, AIQueryError):
                    try:
                        value = _value(endpoint, answer, opts)
                    except AIQueryError as exc:
                        answer = exc
                    except Exception as exc:  # noqa: BLE001 - a bug of ours fails this row, not the query
                        answer = OutputError(f"endpoint {endpoint.name!r}: the answer could not be converted "
                                             f"({type(exc).__name__}: {shorten(str(exc))}); please report this "
                                             "as a bug")
                    else:
                        out[i] = orjson.dumps(value if opts.fail_on_error else _row(value, answer, opts)).decode()
                        continue
                if opts.fail_on_error:
                    raise answer
                failures[i] = answer
                failed_options[i] = opts
        except AIQueryError:
            if query is not None:
                engine.end_query(query)  # the query fails: stop reading ahead for it now
            raise
        for i, exc in failures.items():
            out[i] = orjson.dumps(_row(None, exc, failed_options.get(i) or registration.options(raw_options[i]))).decode()
        if query is not None:
            query.rows_done += len(rows)  # the rows of this query's progress (aiquery/_progress.py)
        return pa.array(out, type=pa.string())

    return invoke
