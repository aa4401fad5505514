-- Your own endpoints: a column of prompts in, a column of answers out.
-- Needs endpoints named 'chat' and 'embed' in aiquery.toml (see README.md); the tests run it against
-- their fake OpenAI-compatible server.

CREATE OR REPLACE TABLE reviews AS
SELECT * FROM (VALUES
    (1, 'A moving, beautifully shot film with a superb cast.'),
    (2, 'Two hours I will never get back. Dull and predictable.'),
    (3, 'Fine for a rainy afternoon, if forgettable.'),
    (4, NULL)
) AS t(id, review);

-- One answer per row; NULL reviews send nothing and answer NULL.
SELECT id,
       ai_query('chat', 'Answer with one word, positive or negative: ' || review,
                modelParameters => {'max_tokens': 5, 'temperature': 0.0}) AS sentiment
FROM reviews
ORDER BY id;

-- A typed answer: responseFormat as a STRUCT type gives a real STRUCT column.
SELECT id, judged.sentiment, judged.confidence
FROM (SELECT id,
             ai_query('chat', 'Judge this review: ' || review,
                      responseFormat => 'STRUCT<sentiment: STRING, confidence: DOUBLE>') AS judged
      FROM reviews)
ORDER BY id;

-- For big jobs: failOnError => false keeps going and records each failed row's error.
CREATE OR REPLACE TABLE scored AS
SELECT id, ai_query('chat', review, failOnError => false) AS result
FROM reviews;

SELECT id, result.response, result.errorMessage FROM scored ORDER BY id;

-- Embeddings are FLOAT[] and work with DuckDB's list functions.
SELECT a.id, b.id AS most_similar,
       round(list_cosine_similarity(a.embedding, b.embedding), 3) AS similarity
FROM (SELECT id, ai_query('embed', review) AS embedding FROM reviews WHERE review IS NOT NULL) a,
     (SELECT id, ai_query('embed', review) AS embedding FROM reviews WHERE review IS NOT NULL) b
WHERE a.id <> b.id
QUALIFY row_number() OVER (PARTITION BY a.id ORDER BY similarity DESC) = 1
ORDER BY a.id;
