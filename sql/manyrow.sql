-- Functions over many rows at once (DuckDB only): ai_agg, ai_summarize_agg, ai_top_k, ai_join and the
-- cascades. The tests run this file against their fake server, which echoes the text, answers a JSON
-- schema with its first allowed value and embeds by hashing.

CREATE OR REPLACE TABLE reviews AS
SELECT * FROM (VALUES
    (1, 'kettle', 'Boils fast, but the lid broke in a week.'),
    (2, 'kettle', 'The handle gets too hot to touch.'),
    (3, 'kettle', NULL),
    (4, 'toaster', 'Toasts evenly and the crumb tray is easy to clean.'),
    (5, 'toaster', 'The soundtrack of its timer is a loud, annoying beep.')
) AS t(id, product, review);

CREATE OR REPLACE TABLE known_issues AS
SELECT * FROM (VALUES
    (10, 'The lid or handle breaks or overheats.'),
    (11, 'The timer or controls are noisy.')
) AS t(issue_id, description);

-- One answer per group, however large the group: parts that fit the context, then their answers combined.
SELECT product,
       ai_agg(review, 'What do customers complain about?', endpoint => 'chat') AS complaints,
       ai_summarize_agg(review, endpoint => 'chat') AS summary
FROM reviews
GROUP BY product
ORDER BY product;

-- The k values most relevant to a query: ranked by embedding similarity, the best reranked by the chat endpoint.
SELECT ai_top_k(review, 'complaints about noise', 2, endpoint => 'chat', embedding_endpoint => 'embed') AS noisiest
FROM reviews;

-- A semantic join: each review against every known issue in one request when they fit (else the most
-- similar ones by embedding), never one request per pair.
SELECT id, issue_id
FROM ai_join('reviews', 'review', 'known_issues', 'description', 'the review reports this issue',
             endpoint => 'chat', embedding_endpoint => 'embed')
ORDER BY id, issue_id;

-- A cascade: the endpoint answers a sample, a proxy trained on it answers the rows it is sure of.
SELECT id, ai_filter_cascade(review, 'the review is a complaint', target => 0.9, proxy => 'embed',
                             endpoint => 'chat') AS complaint
FROM reviews
ORDER BY id;

-- What each function planned and measured: plan, requests against the naive plan's, a cascade's agreement.
SELECT function, plan, requests, naive_requests, figures['agreement'] AS agreement
FROM aiquery_plans()
ORDER BY function;
