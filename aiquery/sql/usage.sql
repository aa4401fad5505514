-- Usage figures as tables: aiquery_usage() per endpoint since the process started,
-- aiquery_query_usage() per query (the running ones and the last 100) and endpoint: `finished` is
-- NULL while it runs; `read_ahead` is yes, or no with the reason (aiquery/_planner.py); rows_done of
-- rows_total (NULL: not known; rows_total_estimated: DuckDB's estimate), percent, seconds_left and
-- cost_projected_usd are the figures of the progress line (aiquery/_progress.py).
-- $USAGE_UDF is a Python UDF (aiquery/_usage.py) answering the rows as JSON.

CREATE OR REPLACE TEMP MACRO __aiquery_usage_columns() AS
'{"requests": "BIGINT", "answered": "BIGINT", "cache_hits": "BIGINT", "cache_not_stored": "BIGINT",
  "retries": "BIGINT",
  "throttled": "BIGINT", "errors": "BIGINT", "error_kinds": "MAP(VARCHAR, BIGINT)",
  "prompt_tokens": "BIGINT", "completion_tokens": "BIGINT", "cached_tokens": "BIGINT", "total_tokens": "BIGINT",
  "batched": "BIGINT",
  "latency_p50_ms": "DOUBLE", "latency_p95_ms": "DOUBLE", "latency_p99_ms": "DOUBLE", "cost_usd": "DOUBLE"}';

CREATE OR REPLACE TEMP MACRO aiquery_usage() AS TABLE
SELECT *
FROM (SELECT unnest(json_transform_strict($USAGE_UDF('endpoints'),
                    '[{"endpoint": "VARCHAR", "model": "VARCHAR", ' || __aiquery_usage_columns()[2:] || ']'),
                    recursive := true))
ORDER BY endpoint;

CREATE OR REPLACE TEMP MACRO aiquery_query_usage() AS TABLE
-- Times are UTC TIMESTAMPs: Python reads a TIMESTAMPTZ only with pytz installed.
SELECT * REPLACE (make_timestamp((started * 1e6)::BIGINT) AS started,
                  make_timestamp((finished * 1e6)::BIGINT) AS finished)
FROM (SELECT unnest(json_transform_strict($USAGE_UDF('queries'),
                    '[{"query_id": "BIGINT", "statement": "VARCHAR", "started": "DOUBLE", "finished": "DOUBLE", '
                    || '"read_ahead": "VARCHAR", "endpoint": "VARCHAR", "model": "VARCHAR", '
                    || '"rows_done": "BIGINT", "rows_total": "BIGINT", "rows_total_estimated": "BOOLEAN", '
                    || '"percent": "DOUBLE", "seconds_left": "DOUBLE", "deduplicated": "BIGINT", '
                    || '"cost_projected_usd": "DOUBLE", ' || __aiquery_usage_columns()[2:] || ']'),
                    recursive := true))
ORDER BY query_id, endpoint;
