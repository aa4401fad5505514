-- The constant arguments of one ai_query call, packed into one JSON text for the Python side.
-- Shared by ai_query.sql and prefetch.sql so both build the very same requests.
CREATE OR REPLACE TEMP MACRO __aiquery_options(modelParameters, failOnError, responseFormat, returnType, cache,
                                               details, batch) AS
to_json({'modelParameters': modelParameters, 'failOnError': failOnError,
         'responseFormat': responseFormat, 'returnType': returnType, 'cache': cache, 'details': details,
         'batch': batch});
