-- The AI Functions family (Databricks' task functions), each a macro over ai_query.
--
-- Every function takes endpoint, modelParameters and failOnError like ai_query. The endpoint
-- defaults to the default_chat_endpoint / default_embedding_endpoint given to connect() or the
-- config file, else local-chat / local-embed (ai_classify: local-classify): $DEFAULT_CHAT_ENDPOINT,
-- $DEFAULT_CLASSIFY_ENDPOINT and $DEFAULT_EMBEDDING_ENDPOINT are filled in at registration
-- (aiquery/_registration.py).
--
-- Chat functions send two messages: the instruction (system) and the text (user), so the text
-- is never read as part of the instruction. Every prompt of the family is in this file, except
-- those of ai_classify and ai_extract, which Python builds from their labels and schemas.
-- A NULL text gives NULL and sends nothing (|| and the CASE below keep NULL NULL).
--
-- failOnError => false gives ai_query's STRUCT(response <the function's type>, errorMessage VARCHAR).
--
-- Functions whose answer is a field of a JSON answer (ai_analyze_sentiment, ai_filter)
-- ask ai_query for a STRUCT (returnType) and take the field out with __aiquery_field, which goes
-- through JSON because the STRUCT is the answer itself or sits under `response`, by failOnError.
-- No statement here may hold a semicolon, even in a comment: the file is split on them.

-- [instruction, text] as chat messages, NULL when the text (or the instruction) is NULL.
-- A macro parameter used twice is evaluated twice, so values used more than once go through a
-- one-element list_transform: its lambda names them once (content may itself call a model).
CREATE OR REPLACE TEMP MACRO __aiquery_messages(instruction, content) AS
list_transform([[instruction::VARCHAR, content::VARCHAR]],
               lambda p: CASE WHEN p[1] IS NOT NULL AND p[2] IS NOT NULL
                              THEN [{'role': 'system', 'content': p[1]}, {'role': 'user', 'content': p[2]}] END)[1];

-- A json_schema responseFormat: one required property `name` with the schema `property`.
CREATE OR REPLACE TEMP MACRO __aiquery_schema_format(name, property) AS
json_object('type', 'json_schema',
            'json_schema', json_object('name', 'answer', 'strict', true,
                                       'schema', json_object('type', 'object',
                                                             'properties', json_object(name::VARCHAR, property),
                                                             'required', [name],
                                                             'additionalProperties', false)))::VARCHAR;

-- Field `name` of an ai_query STRUCT answer, as `type` (JSON transform spelling, like '"VARCHAR"').
CREATE OR REPLACE TEMP MACRO __aiquery_field(result, name, failOnError, type) AS
list_transform([to_json(result)], lambda j: json_transform_strict(
    CASE WHEN failOnError THEN json_extract(j, '$.' || name)
         WHEN j IS NOT NULL THEN json_object('response', json_extract(j, '$.response.' || name),
                                             'errorMessage', json_extract_string(j, '$.errorMessage')) END,
    -- nullif(...) adds nothing: it makes DuckDB check the macro at its first use (see ai_query.sql).
    concat(CASE WHEN failOnError THEN type
                ELSE '{"response": ' || type || ', "errorMessage": "VARCHAR"}' END,
           nullif(name, name))))[1];

-- The chat functions answer in text, so their modelParameters carry a mark that makes the Python side
-- refuse tools (which turn ai_query's answer into STRUCT(content, tool_calls)); it is never sent.
-- error() here would stop DuckDB from folding the answer's type at bind time.
CREATE OR REPLACE TEMP MACRO __aiquery_text_only(modelParameters) AS
json_merge_patch(coalesce(to_json(modelParameters), '{}'), '{"__aiquery_text_only": true}');

CREATE OR REPLACE TEMP MACRO ai_gen(prompt, endpoint := $DEFAULT_CHAT_ENDPOINT, modelParameters := NULL,
                                    failOnError := true) AS
ai_query(endpoint, prompt::VARCHAR, modelParameters := __aiquery_text_only(modelParameters),
         failOnError := failOnError);

-- max_words 0: no limit.
CREATE OR REPLACE TEMP MACRO ai_summarize(content, max_words := 50, endpoint := $DEFAULT_CHAT_ENDPOINT,
                                          modelParameters := NULL, failOnError := true) AS
ai_query(endpoint,
         __aiquery_messages(CASE WHEN max_words < 0 THEN error('ai_summarize: max_words must be 0 (no limit) or more')
                                 WHEN max_words = 0 THEN 'Summarize the text. Answer with the summary only.'
                                 ELSE 'Summarize the text in at most ' || max_words::VARCHAR
                                      || ' words. Answer with the summary only.' END,
                            content),
         modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError);

CREATE OR REPLACE TEMP MACRO ai_translate(content, to_lang, endpoint := $DEFAULT_CHAT_ENDPOINT,
                                          modelParameters := NULL, failOnError := true) AS
ai_query(endpoint,
         __aiquery_messages('Translate the text to ' || to_lang || '. Answer with the translation only.', content),
         modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError);

CREATE OR REPLACE TEMP MACRO ai_fix_grammar(content, endpoint := $DEFAULT_CHAT_ENDPOINT, modelParameters := NULL,
                                            failOnError := true) AS
ai_query(endpoint,
         __aiquery_messages('Correct the grammar and spelling of the text. Answer with the corrected text only.',
                            content),
         modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError);

-- positive, negative, neutral or mixed: the schema's enum constrains the model, and the answer is
-- checked against it (aiquery/_udf.py).
CREATE OR REPLACE TEMP MACRO ai_analyze_sentiment(content, endpoint := $DEFAULT_CHAT_ENDPOINT,
                                                  modelParameters := NULL, failOnError := true) AS
__aiquery_field(
    ai_query(endpoint,
             __aiquery_messages('What is the sentiment of the text: positive, negative, neutral or mixed?', content),
             modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError,
             responseFormat := __aiquery_schema_format('sentiment', json_object('type', 'string', 'enum',
                                                       ['positive', 'negative', 'neutral', 'mixed'])),
             returnType := 'STRUCT(sentiment VARCHAR)'),
    'sentiment', failOnError, '"VARCHAR"');

-- ai_classify and ai_extract build their prompt, schema and type in aiquery/_tasks.py (prompts
-- included): $TASK_UDF is a Python function without side effects, which DuckDB runs while
-- planning since its arguments are constants, and __task has the UDF reshape each answer.
CREATE OR REPLACE TEMP MACRO __aiquery_task_part(kind, labels, options, multilabel, part) AS
$TASK_UDF(kind, to_json(labels)::VARCHAR, to_json(options)::VARCHAR, to_json(multilabel)::VARCHAR, part);

CREATE OR REPLACE TEMP MACRO __aiquery_task(kind, labels, options, multilabel) AS
{'kind': kind, 'labels': to_json(labels)::VARCHAR, 'options': to_json(options)::VARCHAR,
 'multilabel': to_json(multilabel)::VARCHAR};

-- One of labels, or with multilabel the list of those that apply. labels: a constant list, or a JSON
-- object (or MAP) of label to description. options: a JSON object, struct or map of multilabel,
-- instructions, confidence, rationale. An answer outside labels is an error for its row, never coerced.
CREATE OR REPLACE TEMP MACRO ai_classify(content, labels, options := NULL, multilabel := NULL,
                                         endpoint := $DEFAULT_CLASSIFY_ENDPOINT, modelParameters := NULL,
                                         failOnError := true) AS
ai_query(endpoint,
         __aiquery_messages(__aiquery_task_part('classify', labels, options, multilabel, 'instruction'), content),
         modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError,
         responseFormat := __aiquery_task_part('classify', labels, options, multilabel, 'format'),
         returnType := __aiquery_task_part('classify', labels, options, multilabel, 'type'),
         __task := __aiquery_task('classify', labels, options, multilabel));

-- A STRUCT of what the text says. schema: a constant list of names (one VARCHAR field each), or a
-- JSON object of field name to type (string, integer, number, boolean, enum, object, array) with
-- descriptions. options: instructions, confidence, citations.
CREATE OR REPLACE TEMP MACRO ai_extract(content, schema, options := NULL, endpoint := $DEFAULT_CHAT_ENDPOINT,
                                        modelParameters := NULL, failOnError := true) AS
ai_query(endpoint,
         __aiquery_messages(__aiquery_task_part('extract', schema, options, NULL, 'instruction'), content),
         modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError,
         responseFormat := __aiquery_task_part('extract', schema, options, NULL, 'format'),
         returnType := __aiquery_task_part('extract', schema, options, NULL, 'type'),
         __task := __aiquery_task('extract', schema, options, NULL));

CREATE OR REPLACE TEMP MACRO ai_mask(content, labels, endpoint := $DEFAULT_CHAT_ENDPOINT, modelParameters := NULL,
                                     failOnError := true) AS
ai_query(endpoint,
         __aiquery_messages('Replace every ' || array_to_string(labels, ', ')
                            || ' in the text with [MASKED]. Answer with the masked text only.', content),
         modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError);

-- Whether the text meets condition: a BOOLEAN for WHERE clauses.
CREATE OR REPLACE TEMP MACRO ai_filter(content, condition, endpoint := $DEFAULT_CHAT_ENDPOINT,
                                       modelParameters := NULL, failOnError := true) AS
__aiquery_field(
    ai_query(endpoint,
             __aiquery_messages('Is this true of the text: ' || condition || '?', content),
             modelParameters := __aiquery_text_only(modelParameters), failOnError := failOnError,
             responseFormat := 'STRUCT<result: BOOLEAN>'),
    'result', failOnError, '"BOOLEAN"');

CREATE OR REPLACE TEMP MACRO ai_embed(content, endpoint := $DEFAULT_EMBEDDING_ENDPOINT, modelParameters := NULL,
                                      failOnError := true, normalize := NULL) AS
ai_query(endpoint, content::VARCHAR, modelParameters := modelParameters, failOnError := failOnError,
         normalize := normalize);

-- The embedding vector in an ai_embed result (as JSON), whichever failOnError shaped it.
CREATE OR REPLACE TEMP MACRO __aiquery_vector(j, failOnError) AS
json_transform_strict(json_extract(j, CASE WHEN failOnError THEN '$' ELSE '$.response' END), '["FLOAT"]');

CREATE OR REPLACE TEMP MACRO __aiquery_similarity(x, y, failOnError) AS
list_transform([[to_json(x), to_json(y)]], lambda p: CASE WHEN p[1] IS NOT NULL AND p[2] IS NOT NULL THEN
json_transform_strict(
    CASE WHEN failOnError
         THEN to_json(list_cosine_similarity(__aiquery_vector(p[1], failOnError), __aiquery_vector(p[2], failOnError)))
         ELSE json_object('response', list_cosine_similarity(__aiquery_vector(p[1], failOnError),
                                                             __aiquery_vector(p[2], failOnError)),
                          'errorMessage', coalesce(json_extract_string(p[1], '$.errorMessage'),
                                                   json_extract_string(p[2], '$.errorMessage'))) END,
    concat(CASE WHEN failOnError THEN '"FLOAT"' ELSE '{"response": "FLOAT", "errorMessage": "VARCHAR"}' END,
           nullif(failOnError, failOnError)::VARCHAR)) END)[1];

-- Cosine similarity of the two texts' embeddings. When either text is NULL, neither is sent.
CREATE OR REPLACE TEMP MACRO ai_similarity(a, b, endpoint := $DEFAULT_EMBEDDING_ENDPOINT, modelParameters := NULL,
                                           failOnError := true) AS
list_transform([[a::VARCHAR, b::VARCHAR]], lambda p: __aiquery_similarity(
    ai_embed(CASE WHEN p[2] IS NOT NULL THEN p[1] END, endpoint := endpoint, modelParameters := modelParameters,
             failOnError := failOnError),
    ai_embed(CASE WHEN p[1] IS NOT NULL THEN p[2] END, endpoint := endpoint, modelParameters := modelParameters,
             failOnError := failOnError),
    failOnError))[1];
