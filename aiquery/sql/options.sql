-- The constant arguments of one ai_query call, packed into one JSON text for the Python side.
-- Shared by ai_query.sql and readahead.sql so both build the very same requests. `task` is set by
-- the task functions whose answers Python reshapes (aiquery/_tasks.py), NULL for ai_query itself.
-- No statement here may hold a semicolon, even in a string: the file is split on them.

-- One pass removing the innermost parenthesised groups of a type string.
CREATE OR REPLACE TEMP MACRO __aiquery_flatten(t) AS regexp_replace(t, '\([^()]*\)', '', 'g');
CREATE OR REPLACE TEMP MACRO __aiquery_flatten4(t) AS
__aiquery_flatten(__aiquery_flatten(__aiquery_flatten(__aiquery_flatten(t))));

-- Whether modelParameters is a STRUCT with a top-level field `tools`: then every answer is
-- STRUCT(content, tool_calls). It is read from the argument's type, not its value, so that DuckDB
-- knows the column's type at bind time even when modelParameters is a column (typeof folds). The
-- struct's own fields are what is left once nested types (up to 16 levels deep) are removed.
CREATE OR REPLACE TEMP MACRO __aiquery_has_tools(modelParameters) AS
regexp_matches(__aiquery_flatten4(__aiquery_flatten4(__aiquery_flatten4(__aiquery_flatten4(
                   regexp_extract(typeof(modelParameters), '^STRUCT\((.*)\)$', 1))))),
               '(^|, )"?tools"? ');

CREATE OR REPLACE TEMP MACRO __aiquery_options(modelParameters, failOnError, responseFormat, returnType, cache,
                                               details, normalize, batch, task) AS
to_json({'modelParameters': modelParameters, 'failOnError': failOnError,
         'responseFormat': responseFormat, 'returnType': returnType, 'cache': cache, 'details': details,
         'normalize': normalize, 'tools': __aiquery_has_tools(modelParameters), 'batch': batch, 'task': task});


-- The legacy form ai_query(endpoint, request, 'returnType', 'TYPE') lands 'returnType' in the third
-- parameter (modelParameters) and the type in the fourth (failOnError). The macros below give each
-- parameter's meaning in either form. failOnError and returnType shape the column's type, so they
-- must fold to constants even when modelParameters is a column: they look at its type only
-- (a string, which modelParameters never is), and its value is checked when the call runs.
CREATE OR REPLACE TEMP MACRO __aiquery_legacy(modelParameters) AS typeof(modelParameters) = 'VARCHAR';

-- A string other than 'returnType' there is a mistake, said so when the call runs (error() does not
-- fold). Otherwise DuckDB would report that the fourth argument is not a BOOLEAN.
CREATE OR REPLACE TEMP MACRO __aiquery_params(modelParameters) AS
CASE WHEN NOT __aiquery_legacy(modelParameters) THEN modelParameters
     WHEN lower(modelParameters::VARCHAR) = 'returntype' THEN NULL
     ELSE error('ai_query: the third argument, ' || to_json(modelParameters)::VARCHAR || ', is not modelParameters '
                || '(a struct such as {''max_tokens'': 100}). The legacy form is ai_query(endpoint, request, '
                || '''returnType'', ''TYPE''), or else name the argument, as in returnType => ''TYPE''') END;

-- As JSON, so that a failOnError that is not a BOOLEAN reaches Python's check as it was written
-- (a CASE with a BOOLEAN branch would cast 'no' to false).
CREATE OR REPLACE TEMP MACRO __aiquery_fail(modelParameters, failOnError) AS
CASE WHEN __aiquery_legacy(modelParameters) THEN 'true'::JSON ELSE to_json(failOnError) END;

CREATE OR REPLACE TEMP MACRO __aiquery_return(modelParameters, failOnError, returnType) AS
CASE WHEN __aiquery_legacy(modelParameters) THEN json_extract_string(to_json(failOnError), '$') ELSE returnType END;
