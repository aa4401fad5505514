-- Functions over many rows at once: ai_agg, ai_summarize_agg, ai_top_k (aggregates), ai_join (a table
-- macro) and the cascades ai_filter_cascade, ai_classify_cascade. Each hands a Python UDF
-- (aiquery/_manyrow.py) the values it needs, as a list, and the UDF plans the requests: splits a group to
-- fit the model's context, blocks join candidates by embedding similarity, lets a proxy answer the rows
-- it is confident about. They are DuckDB-only (aiquery.spark does not register them).
-- $DEFAULT_CHAT_ENDPOINT, $DEFAULT_EMBEDDING_ENDPOINT and the UDFs' names ($MANY_UDF, ...) are filled in at
-- registration, $CONTEXT for each connection or cursor.
-- No statement here may hold a semicolon, even in a comment: the file is split on them.

-- A many-row UDF's JSON answer as the column's type (`type` in JSON transform spelling), by failOnError.
CREATE OR REPLACE TEMP MACRO __aiquery_many_answer(answer, failOnError, type) AS
json_transform_strict(answer, concat(CASE WHEN failOnError THEN type
                                          ELSE '{"response": ' || type || ', "errorMessage": "VARCHAR"}' END,
                                     -- nullif(...) adds nothing: it makes DuckDB check the macro at its first use.
                                     nullif(type, type)));

-- One answer to `instruction` about all of a group's values (NULLs skipped, NULL for a group without any).
CREATE OR REPLACE TEMP MACRO ai_agg(expr, instruction, endpoint := $DEFAULT_CHAT_ENDPOINT, modelParameters := NULL,
                                   failOnError := true) AS
__aiquery_many_answer(
    $MANY_UDF('agg', endpoint, list(expr::VARCHAR), to_json({'function': 'ai_agg', 'instruction': instruction}),
                   __aiquery_options(modelParameters, failOnError, NULL, NULL, NULL, false, NULL, NULL, NULL),
                   current_query(), txid_current(), $CONTEXT),
    failOnError, '"VARCHAR"');

CREATE OR REPLACE TEMP MACRO ai_summarize_agg(expr, endpoint := $DEFAULT_CHAT_ENDPOINT, modelParameters := NULL,
                                             failOnError := true) AS
__aiquery_many_answer(
    $MANY_UDF('agg', endpoint, list(expr::VARCHAR),
                   to_json({'function': 'ai_summarize_agg', 'instruction': 'Summarize the rows in one paragraph.'}),
                   __aiquery_options(modelParameters, failOnError, NULL, NULL, NULL, false, NULL, NULL, NULL),
                   current_query(), txid_current(), $CONTEXT),
    failOnError, '"VARCHAR"');

-- The k values of the group most relevant to `query`, most relevant first: ranked by embedding
-- similarity, then (rerank => true) the best candidates reranked by the chat endpoint.
CREATE OR REPLACE TEMP MACRO ai_top_k(expr, query, k, rerank := true, candidates := NULL,
                                     endpoint := $DEFAULT_CHAT_ENDPOINT,
                                     embedding_endpoint := $DEFAULT_EMBEDDING_ENDPOINT, modelParameters := NULL,
                                     failOnError := true) AS
__aiquery_many_answer(
    $MANY_UDF('top_k', endpoint, list(expr::VARCHAR),
                   to_json({'query': query, 'k': k, 'rerank': rerank, 'candidates': candidates,
                            'embedding_endpoint': embedding_endpoint}),
                   __aiquery_options(modelParameters, failOnError, NULL, NULL, NULL, false, NULL, NULL, NULL),
                   current_query(), txid_current(), $CONTEXT),
    failOnError, '["VARCHAR"]');

-- The rows of two tables (named by strings) whose texts meet `condition`, without asking about every pair:
-- each left row's candidates are all right rows when there are at most k of them, else its k most similar
-- by embedding, and the chat endpoint is asked once per left row about its candidates (per_pair => true:
-- once per candidate pair). k => NULL (the default) lists every right row when it fits in a few
-- requests per left row, else takes the 10 most similar (aiquery/_join.py).
CREATE OR REPLACE TEMP MACRO ai_join(left_table, left_column, right_table, right_column, condition, k := NULL,
                                    per_pair := false, endpoint := $DEFAULT_CHAT_ENDPOINT,
                                    embedding_endpoint := $DEFAULT_EMBEDDING_ENDPOINT, modelParameters := NULL) AS TABLE
SELECT __aiquery_l.*, __aiquery_r.*
FROM (SELECT unnest(json_transform_strict(
          $MANY_UDF('join', endpoint,
                         (SELECT list(DISTINCT struct_extract(__aiquery_t, left_column)::VARCHAR)
                          FROM query_table(left_table) __aiquery_t),
                         to_json({'condition': condition, 'k': k, 'per_pair': per_pair,
                                  'embedding_endpoint': embedding_endpoint,
                                  'right': (SELECT list(DISTINCT struct_extract(__aiquery_t, right_column)::VARCHAR)
                                            FROM query_table(right_table) __aiquery_t)}),
                         __aiquery_options(modelParameters, true, NULL, NULL, NULL, false, NULL, NULL, NULL),
                         current_query(), txid_current(), $CONTEXT),
          '[{"__aiquery_left": "VARCHAR", "__aiquery_right": "VARCHAR"}]'), recursive := true)) AS __aiquery_p
JOIN query_table(left_table) __aiquery_l
  ON struct_extract(__aiquery_l, left_column)::VARCHAR = __aiquery_p.__aiquery_left
JOIN query_table(right_table) __aiquery_r
  ON struct_extract(__aiquery_r, right_column)::VARCHAR = __aiquery_p.__aiquery_right;

-- ai_filter with a cascade: a proxy trained on the endpoint's answers for a sample of the rows answers
-- the rows it is sure of. The endpoint is sent what ai_filter sends (the same cached answers).
CREATE OR REPLACE TEMP MACRO ai_filter_cascade(content, condition, target := 0.9, sample := 100,
                                              proxy := $DEFAULT_EMBEDDING_ENDPOINT,
                                              endpoint := $DEFAULT_CHAT_ENDPOINT, modelParameters := NULL,
                                              failOnError := true) AS
__aiquery_many_answer(
    list_transform([content::VARCHAR], lambda c: $CASCADE_UDF(
        endpoint, c, to_json(__aiquery_messages('Is this true of the text: ' || condition || '?', c)),
        __aiquery_options(modelParameters, failOnError, 'STRUCT<result: BOOLEAN>', NULL, NULL, false, NULL, NULL, NULL),
        to_json({'function': 'ai_filter_cascade', 'field': 'result', 'choices': [true, false],
                 'target': target, 'sample': sample, 'proxy': proxy}),
        current_query(), txid_current(), $CONTEXT))[1],
    failOnError, '"BOOLEAN"');

-- ai_classify (one label) with a cascade, as ai_filter_cascade.
CREATE OR REPLACE TEMP MACRO ai_classify_cascade(content, labels, target := 0.9, sample := 100,
                                                proxy := $DEFAULT_EMBEDDING_ENDPOINT,
                                                endpoint := $DEFAULT_CHAT_ENDPOINT, modelParameters := NULL,
                                                failOnError := true) AS
__aiquery_many_answer(
    list_transform([content::VARCHAR], lambda c: $CASCADE_UDF(
        endpoint, c,
        to_json(__aiquery_messages('Classify the text with one of these labels: '
                                   || array_to_string(labels, ', ') || '.', c)),
        __aiquery_options(modelParameters, failOnError,
                          __aiquery_schema_format('label', json_object('type', 'string', 'enum', labels)), NULL, NULL,
                          false, NULL, NULL, NULL),
        to_json({'function': 'ai_classify_cascade', 'field': 'label', 'choices': labels,
                 'target': target, 'sample': sample, 'proxy': proxy}),
        current_query(), txid_current(), $CONTEXT))[1],
    failOnError, '"VARCHAR"');

-- What the many-row functions planned and measured, per query (the last 200 records).
CREATE OR REPLACE TEMP MACRO aiquery_plans() AS TABLE
SELECT *
FROM (SELECT unnest(json_transform_strict($PLANS_UDF(),
                    '[{"query_id": "BIGINT", "statement": "VARCHAR", "function": "VARCHAR", "endpoint": "VARCHAR", '
                    || '"plan": "VARCHAR", "rows": "BIGINT", "groups": "BIGINT", "requests": "BIGINT", '
                    || '"cache_hits": "BIGINT", "naive_requests": "BIGINT", "figures": "MAP(VARCHAR, DOUBLE)"}]'),
                    recursive := true))
ORDER BY query_id, function, endpoint;
