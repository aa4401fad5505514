-- The rest of the serving API: several choices, provider parameters, tools, unit-length embeddings.
-- Needs endpoints named 'chat' and 'embed' (see README.md, "Your own endpoints"); the tests
-- run it against their fake server, which echoes the prompt and calls tools with sample arguments.

CREATE OR REPLACE TABLE films AS
SELECT * FROM (VALUES
    (1, 'A lighthouse keeper spends a winter alone.'),
    (2, 'Two rival chefs open restaurants on the same street.')
) AS t(id, plot);

-- n choices: the column holds the first one, or all of them with an ARRAY returnType.
SELECT id,
       ai_query('chat', 'A tagline for this film: ' || plot,
                modelParameters => {'n': 3, 'temperature': 0.9}) AS first_tagline,
       ai_query('chat', 'A tagline for this film: ' || plot,
                modelParameters => {'n': 3, 'temperature': 0.9}, returnType => 'ARRAY<STRING>') AS all_taglines
FROM films
ORDER BY id;

-- Parameters aiquery does not know go into the request body as they are.
SELECT ai_query('chat', 'Say hello',
                modelParameters => {'max_tokens': 20, 'top_k': 40, 'repetition_penalty': 1.1,
                                    'extra_params': {'safe_prompt': true}}) AS answer;

-- Tools: the column is STRUCT(content, tool_calls); each call has an id, a name and JSON arguments.
SELECT question,
       answer.content,
       answer.tool_calls[1].name AS tool,
       answer.tool_calls[1].arguments ->> '$.city' AS city
FROM (SELECT question,
             ai_query('chat', question,
                      modelParameters => {'tools': [{'type': 'function', 'function': {
                                              'name': 'get_weather', 'description': 'The weather in a city now',
                                              'parameters': {'type': 'object',
                                                             'properties': {'city': {'type': 'string'}},
                                                             'required': ['city']}}}],
                                          'tool_choice': 'required'}) AS answer
      FROM (VALUES ('Do I need an umbrella in Oslo?')) AS q(question));

-- Embeddings scaled to unit length, and a check for an endpoint whose vectors are not.
SELECT count(*) FILTER (WHERE abs(sqrt(list_inner_product(raw, raw)) - 1) > 1e-3) AS not_unit_length,
       count(*) FILTER (WHERE abs(sqrt(list_inner_product(unit, unit)) - 1) > 1e-3) AS not_unit_after_normalize
FROM (SELECT ai_query('embed', plot) AS raw, ai_query('embed', plot, normalize => true) AS unit FROM films);
