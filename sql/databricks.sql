-- dialect: databricks
-- A Databricks job as it was written there, run with `aiquery run --dialect databricks sql/databricks.sql`.
-- The tests run this file through the dialect against their fake server ("chat" is a chat endpoint).

CREATE OR REPLACE TABLE tickets USING DELTA AS
SELECT * FROM VALUES (1, "My invoice is wrong"), (2, "The app crashes on start") AS t(id, body);

-- Double-quoted strings, array() and named_struct(), as Databricks reads them.
SELECT id,
       ai_classify(body, array("billing", "bug")) AS kind,
       ai_query("chat", "Summarize: " || body,
                modelParameters => named_struct('max_tokens', 50, 'temperature', 0.0)) AS summary
FROM tickets
ORDER BY id;

-- A materialized view is a table here: the model is called once, not on every read.
CREATE OR REPLACE MATERIALIZED VIEW main.default.ticket_moods AS
SELECT id, ai_analyze_sentiment(body) AS mood FROM tickets;

SELECT * FROM main.default.ticket_moods ORDER BY id;

-- A responseFormat answer read with from_json, and a JSON answer with the : path.
SELECT id,
       from_json(ai_query("chat", body, responseFormat => 'STRUCT<reasoning: STRING, severity: STRING>'),
                 'reasoning STRING, severity STRING').severity AS severity,
       ai_query("chat", body, responseFormat => '{"type": "json_object"}'):echo::string AS echoed
FROM tickets
ORDER BY id;
