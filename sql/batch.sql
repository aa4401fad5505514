-- Half price: rows sent through the provider's batch API instead of one request each.
-- batch => true on a call, or batch = true in the endpoint's settings. Needs an endpoint named 'chat'
-- on an OpenAI-compatible server with /files and /batches; the tests run it against their fake one.

CREATE OR REPLACE TABLE reviews AS
SELECT * FROM (VALUES (1, 'A moving, beautifully shot film.'), (2, 'Dull and predictable.')) AS t(id, review);

CREATE OR REPLACE TABLE scored AS
SELECT id, ai_query('chat', 'Answer with one word, positive or negative: ' || review,
                    batch => true, failOnError => false, details => true) AS result
FROM reviews;

SELECT id, result.response, result.errorMessage, result.details.batch_id, result.details.cached_tokens
FROM scored
ORDER BY id;

SELECT endpoint, model, requests, batched, prompt_tokens, cached_tokens, cost_usd
FROM aiquery_usage();
