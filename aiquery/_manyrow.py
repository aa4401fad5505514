"""The many-row functions' UDFs on a connection (their macros: aiquery/sql/manyrow.sql).

$MANY_UDF(kind, endpoint, values, args, options, statement, txid, context)
    kind 'agg' (ai_agg, ai_summarize_agg), 'top_k' (ai_top_k) or 'join' (ai_join): one row per
    group (or one for a join), `values` the group's list, `args` the function's arguments as JSON.
$CASCADE_UDF(endpoint, text, request, options, args, statement, txid, context)
    ai_filter_cascade and ai_classify_cascade: one row per row, `request` the messages ai_query
    would send to the endpoint.
$PLANS_UDF()
    aiquery_plans(): what the functions planned and measured, per query, as JSON.
Their names are numbered per registration, as ai_query's are (aiquery/_registration.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import duckdb
import orjson
import pyarrow as pa
from duckdb import sqltypes

from ._aggregate import aggregate
from ._cascade import Cascades
from ._join import join
from ._rank import top_k
from ._steps import ManyRow, Step

_KINDS = {"agg": aggregate, "top_k": top_k, "join": join}

if TYPE_CHECKING:  # it imports this module to install it
    from ._registration import Registration


def function_names(number: int) -> dict[str, str]:
    """The names of registration `number`'s many-row UDFs, by their placeholder in manyrow.sql."""
    return {"$MANY_UDF": f"__aiquery_many_{number}", "$CASCADE_UDF": f"__aiquery_cascade_{number}",
            "$PLANS_UDF": f"__aiquery_plans_{number}"}


def install(con: duckdb.DuckDBPyConnection, registration: Registration, names: Mapping[str, str]) -> None:
    """Creates the UDFs on `con` (aiquery/_registration.py removes an earlier registration's)."""
    manyrow = ManyRow(registration)
    cascades = Cascades(manyrow)

    def many(kinds: pa.Array, endpoints: pa.Array, values: pa.Array, args: pa.Array, options: pa.Array,
             statements: pa.Array, txids: pa.Array, contexts: pa.Array) -> pa.Array:
        with Step(manyrow, contexts[0].as_py(), statements[0].as_py(), txids[0].as_py()) as step:
            answers = _KINDS[kinds[0].as_py()](step, endpoints[0].as_py(), values.to_pylist(),
                                               [orjson.loads(a) for a in args.to_pylist()], options.to_pylist())
        return pa.array(answers, type=pa.string())

    def cascade(endpoints: pa.Array, texts: pa.Array, requests: pa.Array, options: pa.Array, args: pa.Array,
                statements: pa.Array, txids: pa.Array, contexts: pa.Array) -> pa.Array:
        with Step(manyrow, contexts[0].as_py(), statements[0].as_py(), txids[0].as_py()) as step:
            answers = cascades.run(step, endpoints[0].as_py(), texts.to_pylist(), requests.to_pylist(),
                                   options.to_pylist(), args.to_pylist())
        return pa.array(answers, type=pa.string())

    text, big = sqltypes.VARCHAR, sqltypes.UBIGINT
    con.create_function(names["$MANY_UDF"], many, [text, text, duckdb.list_type(text), text, text, text, big, big],
                        text, type="arrow", null_handling="special", side_effects=True)
    con.create_function(names["$CASCADE_UDF"], cascade, [text, text, text, text, text, text, big, big], text,
                        type="arrow", null_handling="special", side_effects=True)
    con.create_function(names["$PLANS_UDF"], lambda: orjson.dumps(manyrow.plans.rows()).decode(), [], text,
                        side_effects=True)
