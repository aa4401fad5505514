"""Bad input, each case with a clear error naming the endpoint or argument, or a defined result.

One table of cases, so that the whole list of what can go wrong is in one place. Each is run with
failOnError => true (the query fails with the message) and, where the problem belongs to a row,
failOnError => false (that row carries the message, the others their answers).
"""

from __future__ import annotations

import re

import duckdb
import pytest

import aiquery

# (id, SQL, expected error, whether it belongs to a row: with failOnError => false that row carries it;
# otherwise the argument is wrong for every row and the query fails whatever failOnError says)
CASES = [
    ("unknown endpoint", "SELECT ai_query('chatt', 'x')",
     r"unknown endpoint 'chatt'\. Did you mean 'chat'\? Registered endpoints: .*chat", False),
    ("NULL endpoint", "SELECT ai_query(NULL, 'x')",
     "endpoint must be a non-NULL string naming a registered endpoint", False),
    ("endpoint from a column", "SELECT ai_query(e, 'x') FROM (VALUES ('chat')) t(e)", "must be a constant", False),
    ("number as a chat request", "SELECT ai_query('chat', 42)",
     "request for a chat endpoint must be a string prompt or a list of .* messages, got int", True),
    ("struct as a chat request", "SELECT ai_query('chat', {'a': 1})",
     "request for a chat endpoint must be a string prompt .*got dict", True),
    ("number as a completions request", "SELECT ai_query('completions', 42)",
     "request for a completions endpoint must be a string prompt, got int", True),
    ("list to embed", "SELECT ai_query('embed', ['a', 'b'])",
     "request for endpoint 'embed' \\(embeddings\\) must be a string to embed, got list", True),
    ("responseFormat on an embeddings endpoint", "SELECT ai_query('embed', 'x', responseFormat => 'STRUCT<a: INT>')",
     "responseFormat applies to chat endpoints only; endpoint 'embed' is a embeddings endpoint", True),
    ("images on a completions endpoint", "SELECT ai_query('completions', 'x', files => from_hex('FFD8FF00'))",
     "files applies to chat endpoints only", True),
    ("modelParameters of the wrong type", "SELECT ai_query('chat', 'x', modelParameters => {'max_tokens': 'many'})",
     "modelParameters: 'max_tokens' must be int, got 'many'", False),
    ("modelParameters not a struct", "SELECT ai_query('chat', 'x', modelParameters => 5)",
     "modelParameters must be a struct or map", False),
    ("modelParameters setting the prompt", "SELECT ai_query('chat', 'x', modelParameters => {'messages': 'y'})",
     "'messages' is set by ai_query itself", False),
    ("a parameter the provider rejects", "SELECT ai_query('chat', 'x [[status=400]]', modelParameters => {'bogus': 1})",
     "endpoint 'chat': HTTP 400 Bad Request from .*: fake error 400", True),
    ("invalid responseFormat", "SELECT ai_query('chat', 'x', responseFormat => '{\"type\": \"xml\"}')",
     "responseFormat type must be one of text, json_object, json_schema, got 'xml'", False),
    ("responseFormat that is not a struct", "SELECT ai_query('chat', 'x', responseFormat => 'INT')",
     "responseFormat 'INT' must be a STRUCT type", False),
    ("invalid returnType", "SELECT ai_query('chat', 'x', returnType => 'STRUCT<')", "STRUCT<", False),
    ("answer that does not fit the schema",
     "SELECT ai_query('chat', 'x [[reply={\"a\": \"b\"}]]', responseFormat => 'STRUCT<a: INT>')",
     "endpoint 'chat': field 'a': expected INTEGER, got \"b\"", True),
    ("answer that is not JSON", "SELECT ai_query('chat', 'x [[reply=hello]]', returnType => 'INT')",
     "endpoint 'chat': expected INTEGER, got \"hello\"", True),
    ("embeddings of another dimension", "SELECT ai_query('embed', 'y [[dims=3]]')",
     "endpoint 'embed' answered vectors of 3 dimensions where its vectors have 8", True),
    ("server answers HTML", "SELECT ai_query('chat', 'x [[html]]', modelParameters => {'n': 1})",
     "endpoint 'chat': HTTP 502 Bad Gateway from .*: .*", True),
    ("server redirects", "SELECT ai_query('chat', 'x [[redirect=http://127.0.0.1:9/v1]]')",
     "HTTP 307 .*Redirect to http://127.0.0.1:9/v1 not followed", True),
    ("server answers an empty body", "SELECT ai_query('chat', 'x [[empty]]')",
     "endpoint 'chat' answered 200 with an empty body", True),
    ("failOnError not a boolean", "SELECT ai_query('chat', 'x', failOnError => 'no')",
     "failOnError must be true or false, got 'no'", False),
]


@pytest.fixture
def quick_failures(endpoints):
    """Endpoints that give up at once, so that permanent and transient faults alike end fast."""
    return {name: {**settings, "max_attempts": 1} for name, settings in endpoints.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case, sql, error, per_row", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(quick_failures, server, case, sql, error, per_row):
    with aiquery.connect(endpoints=quick_failures) as con:
        con.sql("SELECT ai_query('embed', 'the first vector fixes the dimension')").fetchall()
        with pytest.raises(duckdb.Error, match=error):
            con.sql(sql).fetchall()
        if per_row:  # with failOnError => false the row carries the message instead
            last = sql.rindex(")")
            result = con.sql(sql[:last] + ", failOnError => false" + sql[last:]).fetchall()[0][-1]
            assert result["response"] is None and re.search(error, result["errorMessage"]), result

def test_defined_results_for_null_empty_and_huge_prompts(con, server):
    rows = con.sql("SELECT ai_query('chat', NULL), ai_query('chat', ''), length(ai_query('chat', repeat('x', 1000000))),"
                   " len(ai_query('embed', ''))").fetchall()
    assert rows == [(None, "echo: ", 1_000_006, 8)]
    assert len(server.requests) == 3  # NULL sends nothing; '' and a 1 MB prompt are sent as they are
    chat = [r.body["messages"][0]["content"] for r in server.requests if "messages" in r.body]
    assert sorted(map(len, chat)) == [0, 1_000_000]
