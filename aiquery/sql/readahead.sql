-- On the cursor that reads ahead (aiquery/_readahead.py), ai_query only packs its arguments:
-- the same packing ai_query.sql hands to the UDF, so the requests started early are the ones
-- the real query will ask for.
CREATE OR REPLACE TEMP MACRO ai_query(endpoint, request, modelParameters := NULL, failOnError := true,
                                      responseFormat := NULL, returnType := NULL, files := NULL,
                                      cache := NULL, details := false, normalize := NULL, batch := NULL) AS
{'endpoint': endpoint, 'request': to_json(request),
 'options': __aiquery_options(modelParameters, failOnError, responseFormat, returnType, cache, details, normalize,
                              batch),
 'files': files};
