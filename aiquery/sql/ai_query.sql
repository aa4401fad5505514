-- ai_query(endpoint, request [, modelParameters, failOnError, responseFormat, returnType, files, cache, details,
--                              normalize, batch])
--
-- The Python UDF $INVOKE_UDF answers JSON text; json_transform_strict turns it into the
-- column's type. DuckDB must know that type at bind time, so it is computed here, from the
-- constant arguments, with string functions only (a Python call cannot run at bind time).
-- $EMBEDDING_ENDPOINTS, $DDL(...) and the Python functions' names ($INVOKE_UDF, ...) are filled in at
-- registration (aiquery/_registration.py), $CONTEXT for each connection or cursor (aiquery/_process.py);
-- __aiquery_options and the legacy-form macros come from options.sql.

-- The answer's type: returnType, else a DDL responseFormat, else what the endpoint's task returns.
CREATE OR REPLACE TEMP MACRO __aiquery_content_type(endpoint, responseFormat, returnType) AS
coalesce(
    $DDL(returnType),
    CASE WHEN NOT starts_with(ltrim(responseFormat::VARCHAR), '{') THEN $DDL(responseFormat::VARCHAR) END,
    CASE WHEN list_contains($EMBEDDING_ENDPOINTS, endpoint) THEN 'FLOAT[]' ELSE 'VARCHAR' END);

-- modelParameters with tools: the answer is the model's text (NULL when it called tools instead) and
-- the calls it made (an empty list when it answered in text). __aiquery_has_tools is in options.sql.
CREATE OR REPLACE TEMP MACRO __aiquery_answer_type(endpoint, modelParameters, responseFormat, returnType) AS
CASE WHEN __aiquery_has_tools(modelParameters)
     THEN 'STRUCT(content ' || __aiquery_content_type(endpoint, responseFormat, returnType)
          || ', tool_calls STRUCT(id VARCHAR, name VARCHAR, arguments VARCHAR)[])'
     ELSE __aiquery_content_type(endpoint, responseFormat, returnType) END;

-- failOnError => false wraps every answer with the row's error text.
-- details => true adds how each row went (usage, finish reason, attempts, cache, HTTP status).
CREATE OR REPLACE TEMP MACRO __aiquery_column_type(endpoint, modelParameters, failOnError, responseFormat, returnType,
                                                   details) AS
CASE WHEN failOnError THEN __aiquery_answer_type(endpoint, modelParameters, responseFormat, returnType)
     ELSE 'STRUCT(response ' || __aiquery_answer_type(endpoint, modelParameters, responseFormat, returnType)
          || ', errorMessage VARCHAR'
          || CASE WHEN details THEN ', details STRUCT(prompt_tokens BIGINT, completion_tokens BIGINT, '
                                    || 'total_tokens BIGINT, finish_reason VARCHAR, attempts INTEGER, '
                                    || 'cached BOOLEAN, status INTEGER, cached_tokens BIGINT, batch_id VARCHAR)'
                   ELSE '' END
          || ')' END;

-- The legacy form ai_query(endpoint, request, 'returnType', 'TYPE') is read as returnType => 'TYPE'
-- (options.sql). __task is the task functions' (ai_classify, ai_extract: functions.sql), whose
-- answers Python reshapes (aiquery/_tasks.py), NULL otherwise.
CREATE OR REPLACE TEMP MACRO ai_query(endpoint, request, modelParameters := NULL, failOnError := true,
                                      responseFormat := NULL, returnType := NULL, files := NULL,
                                      cache := NULL, details := false, normalize := NULL, batch := NULL,
                                      __task := NULL) AS
json_transform_strict(
    -- $CONTEXT (the connection or cursor), txid_current() and current_query() tell the UDF which
    -- query a batch belongs to (for reading ahead, and to stop its requests when it ends).
    $INVOKE_UDF(endpoint, to_json(request),
                __aiquery_options(__aiquery_params(modelParameters), __aiquery_fail(modelParameters, failOnError),
                                  responseFormat, __aiquery_return(modelParameters, failOnError, returnType), cache,
                                  details, normalize, batch, __task),
                files, current_query(), txid_current(), $CONTEXT),
    -- nullif(endpoint, endpoint) adds nothing: it only makes DuckDB check this macro at its first use,
    -- when the arguments are known constants, instead of at CREATE time.
    concat(to_json(__aiquery_column_type(endpoint, modelParameters, __aiquery_fail(modelParameters, failOnError),
                                         responseFormat, __aiquery_return(modelParameters, failOnError, returnType),
                                         details)),
           nullif(endpoint, endpoint)));
