-- What a job cost: usage per row (details => true), per endpoint and per query.
-- Needs an endpoint named 'chat' (see README.md); the tests run it against their fake server.

CREATE OR REPLACE TABLE reviews AS
SELECT * FROM (VALUES (1, 'A moving, beautifully shot film.'), (2, 'Dull and predictable.')) AS t(id, review);

CREATE OR REPLACE TABLE scored AS
SELECT id, ai_query('chat', review, failOnError => false, details => true) AS result
FROM reviews;

SELECT id, result.response, result.details.total_tokens, result.details.attempts, result.details.cached
FROM scored
ORDER BY id;

SELECT endpoint, model, requests, cache_hits, retries, errors, total_tokens, latency_p95_ms, cost_usd
FROM aiquery_usage();

SELECT query_id, statement, endpoint, requests, cache_hits, total_tokens, cost_usd
FROM aiquery_query_usage();

-- Sampling at temperature > 0 wants a new answer each time: cache => false.
SELECT ai_query('chat', 'Write a tagline for a film about DuckDB.',
                modelParameters => {'temperature': 1.0}, cache => false) AS tagline;
