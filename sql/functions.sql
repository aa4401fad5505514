-- The task functions: ai_query with the prompt, the response format and the answer's type done for you.
-- Each takes endpoint => (default: default_chat_endpoint / default_embedding_endpoint of aiquery.toml,
-- else local-chat / local-embed), modelParameters => and failOnError =>. The tests run this file
-- against their fake server, which echoes the text and answers a JSON schema with its first allowed value.

CREATE OR REPLACE TABLE reviews AS
SELECT * FROM (VALUES
    (1, 'A moving, beautifully shot film with a superb cast.'),
    (2, 'Two hours I will never get back. Dull and predictable.'),
    (3, NULL)
) AS t(id, review);

-- Sentiment: positive, negative, neutral or mixed. Classification: one of your labels, never anything else.
SELECT id,
       ai_analyze_sentiment(review, endpoint => 'chat') AS sentiment,
       ai_classify(review, ['fresh', 'rotten'], endpoint => 'chat') AS label,
       ai_classify(review, ['acting', 'plot', 'visuals'], multilabel => true, endpoint => 'chat') AS topics
FROM reviews
ORDER BY id;

-- Text in, text out.
SELECT ai_gen('Write a tagline for a film about a lighthouse keeper', endpoint => 'chat') AS tagline,
       ai_summarize('The keeper spends a winter alone, and the light must not go out.', max_words => 10,
                    endpoint => 'chat') AS summary,
       ai_translate('The light must not go out.', 'French', endpoint => 'chat') AS french,
       ai_fix_grammar('the keeper dont sleeps', endpoint => 'chat') AS fixed,
       ai_mask('Call Ann Lee on 555-0101.', ['person', 'phone number'], endpoint => 'chat') AS masked;

-- A STRUCT with one VARCHAR field per label.
SELECT extracted.person, extracted.city
FROM (SELECT ai_extract('Ann Lee flew from Oslo to see the premiere.', ['person', 'city'],
                        endpoint => 'chat') AS extracted);

-- A BOOLEAN for WHERE clauses.
SELECT id FROM reviews
WHERE ai_filter(review, 'the review praises the film', endpoint => 'chat')
ORDER BY id;

-- Embeddings and their cosine similarity.
SELECT len(ai_embed('a lighthouse', endpoint => 'embed')) AS dimensions,
       ai_similarity('The film was wonderful.', 'A marvellous movie.', endpoint => 'embed') AS similarity;

-- failOnError => false: STRUCT(response <the function's type>, errorMessage VARCHAR), one per row.
SELECT id, result.response, result.errorMessage
FROM (SELECT id, ai_classify(review, ['fresh', 'rotten'], endpoint => 'chat', failOnError => false) AS result
      FROM reviews)
ORDER BY id;

-- Labels with descriptions, and options: a STRUCT per row with the label, its confidence (from the
-- answer's logprobs: NULL where the endpoint gives none) and the model's rationale, asked first.
SELECT id, judged.label, judged.confidence, judged.rationale
FROM (SELECT id, ai_classify(review,
                             '{"fresh": "the critic recommends the film", "rotten": "the critic does not"}',
                             '{"confidence": true, "rationale": true}', endpoint => 'chat') AS judged
      FROM reviews)
ORDER BY id;

-- A typed schema: each field has a SQL type of its own, in the order written; NULL for what the text lacks.
SELECT ai_extract('Ann Lee, 41, flew from Oslo on 3 May.',
                  '{"person": {"type": "string", "description": "the full name"},
                    "age": {"type": "integer"},
                    "trip": {"type": "object", "properties": {"from": "string", "month": "string"}},
                    "mode": {"type": "enum", "labels": ["air", "rail", "road"]}}',
                  endpoint => 'chat') AS extracted;
