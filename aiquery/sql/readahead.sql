-- On the cursor that reads ahead (aiquery/_readahead.py), ai_query only packs its arguments:
-- the same packing ai_query.sql hands to the UDF, so the requests started early are the ones
-- the real query will ask for.
CREATE OR REPLACE TEMP MACRO ai_query(endpoint, request, modelParameters := NULL, failOnError := true,
                                      responseFormat := NULL, returnType := NULL, files := NULL,
                                      cache := NULL, details := false, normalize := NULL, batch := NULL,
                                      __task := NULL) AS
{'endpoint': endpoint, 'request': to_json(request),
 'options': __aiquery_options(__aiquery_params(modelParameters), __aiquery_fail(modelParameters, failOnError),
                              responseFormat, __aiquery_return(modelParameters, failOnError, returnType), cache,
                              details, normalize, batch, __task),
 'files': files};
