-- The constant arguments of one ai_query call, packed into one JSON text for the Python side.
-- Shared by ai_query.sql and readahead.sql so both build the very same requests.

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
                                               details, normalize, batch) AS
to_json({'modelParameters': modelParameters, 'failOnError': failOnError,
         'responseFormat': responseFormat, 'returnType': returnType, 'cache': cache, 'details': details,
         'normalize': normalize, 'tools': __aiquery_has_tools(modelParameters), 'batch': batch});
