-- On the read-ahead cursor, after functions.sql: what a task function makes of its ai_query
-- call's answer is left out, so each task function gives its calls' packed arguments (readahead.sql):
-- one, or for ai_similarity a list of its two.
CREATE OR REPLACE TEMP MACRO __aiquery_field(result, name, failOnError, type) AS result;
CREATE OR REPLACE TEMP MACRO __aiquery_similarity(x, y, failOnError) AS [x, y];
