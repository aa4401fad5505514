"""ai_query on embedding endpoints: FLOAT[] columns, batching many inputs per request."""

import duckdb
import pytest

import aiquery


def test_embeddings_are_float_lists_usable_with_duckdb_functions(con):
    result = con.sql("""SELECT typeof(e), len(e), list_cosine_similarity(e, e)
                        FROM (SELECT ai_query('embed', 'hello world') AS e)""").fetchall()[0]
    assert result[0] == "FLOAT[]" and result[1] == 8 and result[2] == pytest.approx(1.0, abs=1e-5)
    fixed = con.sql("SELECT typeof(ai_query('embed', 'hello')::FLOAT[8])").fetchall()[0]
    assert fixed == ("FLOAT[8]",)


def test_same_text_same_vector_different_text_different_vector(con):
    a, b, c = con.sql("""SELECT ai_query('embed', t) FROM (VALUES ('cat'), ('cat'), ('dog')) v(t)""").fetchall()
    assert a == b and a != c


def test_many_inputs_go_in_one_request_and_come_back_to_their_rows(con, server):
    con.sql("CREATE TABLE docs AS SELECT i, 'document ' || i AS txt FROM range(10) t(i)")
    by_batch = dict(con.sql("SELECT i, ai_query('embed', txt) FROM docs").fetchall())
    bodies = server.bodies("/embeddings")
    assert sorted(len(b["input"]) for b in bodies) == [2, 4, 4]  # batch_size = 4
    one_each = {i: con.sql(f"SELECT ai_query('embed', 'document {i}')").fetchall()[0][0] for i in (0, 7)}
    assert by_batch[0] == one_each[0] and by_batch[7] == one_each[7]


def test_databricks_embeddings_endpoint(con, server):
    vector = con.sql("SELECT ai_query('db-embed', 'hello')").fetchall()[0][0]
    assert len(vector) == 8
    request = server.requests[0]
    assert request.path == "/serving-endpoints/databricks-gte/invocations"
    assert request.body == {"input": ["hello"]}


def test_one_vector_per_token_is_a_clear_error(con):
    with pytest.raises(Exception, match="one vector per token"):
        con.sql("SELECT ai_query('embed', 'two words [[per_token_embeddings]]')").fetchall()


def test_embedding_requests_must_be_strings(con, server):
    with pytest.raises(Exception, match="must be a string to embed"):
        con.sql("SELECT ai_query('embed', {'a': 1})").fetchall()
    assert server.requests == []


def test_a_new_connection_takes_the_dimension_the_server_now_answers(endpoints, server):
    """The model behind a URL changed between connections (a server restarted with another model,
    or a test's port reused): the new connection's vectors are answered, and within it they must
    still agree."""
    with aiquery.connect(endpoints=endpoints) as con:
        assert len(con.sql("SELECT ai_query('embed', 'first')").fetchall()[0][0]) == 8
    server.embedding_dim = 3
    with aiquery.connect(endpoints=endpoints) as con:
        assert len(con.sql("SELECT ai_query('embed', 'second')").fetchall()[0][0]) == 3
        with pytest.raises(duckdb.Error, match="answered vectors of 5 dimensions where its vectors have 3"):
            con.sql("SELECT ai_query('embed', 'third [[dims=5]]')").fetchall()
