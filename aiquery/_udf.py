"""The Python side of ai_query: one Arrow batch of rows in, one JSON text per row out.

The SQL macro (aiquery/sql/ai_query.sql) packs the constant arguments into one JSON `options`
string and turns this function's JSON answer into the typed column (VARCHAR, FLOAT[], a STRUCT)
with json_transform_strict. Here: each row's arguments into a call (the connection's Registration
builds it, or takes the one its read-ahead built), the calls sent through the engine as one batch
of the query, and each answer into the column's JSON (aiquery/_answers.py).
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from . import _answers
from ._config import BATCH_LOOKAHEAD, Endpoint
from ._calls import Call
from ._errors import AIQueryError, ArgumentError, OutputError, UnknownEndpointError
from ._options import Options
from ._scrub import shorten


def make_udf(registration: Any):
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
                        value = _answers.value(endpoint, answer, opts)
                    except AIQueryError as exc:
                        answer = exc
                    except Exception as exc:  # noqa: BLE001 - a bug of ours fails this row, not the query
                        answer = OutputError(f"endpoint {endpoint.name!r}: the answer could not be converted "
                                             f"({type(exc).__name__}: {shorten(str(exc))}); please report this "
                                             "as a bug")
                    else:
                        out[i] = orjson.dumps(value if opts.fail_on_error else _answers.row(value, answer, opts)).decode()
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
            out[i] = orjson.dumps(_answers.row(None, exc, failed_options.get(i) or registration.options(raw_options[i]))).decode()
        if query is not None:
            query.rows_done += len(rows)  # the rows of this query's progress (aiquery/_progress.py)
        return pa.array(out, type=pa.string())

    return invoke
