"""ai_query on chat endpoints: answers, wire bodies, arguments, both named-argument syntaxes."""

import base64
import json

import pytest

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16


def test_a_column_of_prompts_gets_a_column_of_answers(con, server):
    con.sql("CREATE TABLE reviews AS SELECT * FROM (VALUES (1, 'great film'), (2, 'dull plot'), (3, NULL)) t(id, txt)")
    result = con.sql("SELECT id, ai_query('chat', txt) AS answer FROM reviews ORDER BY id").fetchall()
    assert result == [(1, "echo: great film"), (2, "echo: dull plot"), (3, None)]
    bodies = server.bodies("/chat/completions")
    assert len(bodies) == 2  # the NULL row sent nothing
    assert sorted(b["messages"][0]["content"] for b in bodies) == ["dull plot", "great film"]
    assert all(b["model"] == "fake-chat" and b["messages"][0]["role"] == "user" for b in bodies)
    assert con.sql("SELECT typeof(ai_query('chat', 'x'))").fetchall()[0] == ("VARCHAR",)


def test_the_key_is_sent_as_a_bearer_token(con, server):
    con.sql("SELECT ai_query('chat', 'hi')").fetchall()
    assert server.requests[0].headers["authorization"] == "Bearer sk-canary-7f3a9c1e5b"


@pytest.mark.parametrize("arrow", ["=>", ":="])
def test_model_parameters_are_merged_into_the_body(con, server, arrow):
    con.sql(f"""SELECT ai_query('chat', 'hi', modelParameters {arrow} {{'max_tokens': 100, 'temperature': 0.0,
               'stop': ['END'], 'top_p': 0.9, 'n': 1, 'reasoning_effort': 'low',
               'thinking': {{'type': 'enabled', 'budget_tokens': 64}}}})""").fetchall()
    body = server.bodies()[0]
    assert body["max_tokens"] == 100 and body["temperature"] == 0.0 and body["stop"] == ["END"]
    assert body["top_p"] == 0.9 and body["n"] == 1 and body["reasoning_effort"] == "low"
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 64}


def test_endpoint_default_parameters_apply_and_call_parameters_win(endpoints, server):
    import aiquery

    endpoints["chat"]["model_parameters"] = {"max_tokens": 10, "temperature": 0.5}
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql("SELECT ai_query('chat', 'hi', modelParameters => {'max_tokens': 99})").fetchall()
    body = server.bodies()[0]
    assert body["max_tokens"] == 99 and body["temperature"] == 0.5


def test_reasoning_models_answer_with_the_text_blocks_only(con):
    answer = con.sql("SELECT ai_query('chat', 'why? [[reasoning]]')").fetchall()[0][0]
    assert answer == "echo: why? [[reasoning]]"
    assert "thinking about it" not in answer


def test_a_list_of_messages_is_a_multi_turn_conversation(con, server):
    answer = con.sql("""SELECT ai_query('chat', [{'role': 'system', 'content': 'be brief'},
                                                 {'role': 'user', 'content': 'hello'},
                                                 {'role': 'assistant', 'content': 'hi'},
                                                 {'role': 'user', 'content': 'how are you'}])""").fetchall()[0][0]
    assert answer == "echo: how are you"
    assert [m["role"] for m in server.bodies()[0]["messages"]] == ["system", "user", "assistant", "user"]


def test_files_become_image_parts_of_a_vision_request(con, server):
    con.execute("CREATE TABLE photos AS SELECT * FROM (VALUES (1, ?::BLOB), (2, ?::BLOB)) t(id, content)", [PNG, JPEG])
    result = con.sql("SELECT id, ai_query('chat', 'describe', files => content) FROM photos ORDER BY id").fetchall()
    assert result == [(1, "echo: describe +1 image(s)"), (2, "echo: describe +1 image(s)")]
    urls = sorted(b["messages"][0]["content"][1]["image_url"]["url"] for b in server.bodies())
    assert urls == sorted([f"data:image/png;base64,{base64.b64encode(PNG).decode()}",
                           f"data:image/jpeg;base64,{base64.b64encode(JPEG).decode()}"])


def test_a_file_that_is_not_an_image_is_an_error_for_its_row(con, server):
    con.execute("CREATE TABLE f AS SELECT ?::BLOB AS content", [b"%PDF-1.4 not an image"])
    result = con.sql("SELECT ai_query('chat', 'describe', files => content, failOnError => false) FROM f").fetchall()[0][0]
    assert result["response"] is None and "not a JPEG, PNG, GIF or WebP image" in result["errorMessage"]
    assert server.requests == []


def test_response_format_ddl_gives_a_typed_struct(con, server):
    for ddl in ("STRUCT<label: STRING, score: DOUBLE, tags: ARRAY<STRING>>",
                "STRUCT(label VARCHAR, score DOUBLE, tags VARCHAR[])"):
        server.reset()
        result = con.sql(f"SELECT ai_query('chat', 'classify', responseFormat => '{ddl}', cache => false) AS r")
        assert result.types[0].id == "struct"
        assert result.fetchall()[0][0] == {"label": "sample", "score": 1.5, "tags": ["sample"]}
        sent = server.bodies()[0]["response_format"]
        assert sent["type"] == "json_schema"
        schema = sent["json_schema"]["schema"]
        assert schema["additionalProperties"] is False
        assert sorted(schema["required"]) == ["label", "score", "tags"]


def test_schema_properties_reach_the_model_in_the_declared_order(con, server):
    """"Reason first" schemas depend on it: the body is not sent with its keys sorted."""
    con.sql("""SELECT ai_query('chat', 'q', responseFormat => 'STRUCT<reasoning: STRING, answer: STRING,
                                   details: STRUCT<zeta: INT, alpha: INT>>')""").fetchall()
    json_text = '{"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", ' \
                '"properties": {"why": {"type": "string"}, "verdict": {"type": "string"}}}}}'
    con.execute("SELECT ai_query('chat', 'q', responseFormat => ?)", [json_text]).fetchall()
    ddl, given = server.requests
    for request, names in ((ddl, ["reasoning", "answer", "details"]), (given, ["why", "verdict"])):
        schema = request.body["response_format"]["json_schema"]["schema"]
        assert list(schema["properties"]) == names  # json.loads keeps the order of the bytes received
        positions = [request.raw.index(f'"{name}":'.encode()) for name in names]
        assert positions == sorted(positions)
    nested = ddl.body["response_format"]["json_schema"]["schema"]["properties"]["details"]
    assert list(nested["properties"]) == ["zeta", "alpha"] and nested["required"] == ["zeta", "alpha"]
    assert list(ddl.body) == ["messages", "model", "response_format"]  # built order, not sorted


def test_struct_fields_are_usable_in_sql(con):
    result = con.sql("""SELECT r.label, r.score * 2 FROM (SELECT ai_query('chat', 'x',
                        responseFormat => 'STRUCT<label: STRING, score: DOUBLE>') AS r)""").fetchall()
    assert result == [("sample", 3.0)]


def test_openai_response_format_forms_are_sent_as_given(con, server):
    schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}}}
    text = con.execute("SELECT ai_query('chat', 'x', responseFormat => ?)", [json.dumps(schema)]).fetchall()[0][0]
    assert json.loads(text) == {"a": 1}
    obj = con.sql("""SELECT ai_query('chat', 'x', responseFormat => '{"type":"json_object"}')""").fetchall()[0][0]
    assert json.loads(obj) == {"echo": "x"}
    plain = con.sql("""SELECT ai_query('chat', 'x', responseFormat => '{"type":"text"}')""").fetchall()[0][0]
    assert plain == "echo: x"
    assert [b["response_format"]["type"] for b in server.bodies()] == ["json_schema", "json_object", "text"]


def test_an_answer_that_does_not_fit_the_format_is_an_error_for_its_row(con):
    result = dict(con.sql("""SELECT p, ai_query('chat', p, responseFormat => 'STRUCT<score: DOUBLE>', failOnError => false)
                             FROM (VALUES ('[[reply={"score": "high"}]]'), ('[[reply=not json at all]]'), ('fine')) t(p)
                          """).fetchall())
    wrong_type, not_json = result['[[reply={"score": "high"}]]'], result["[[reply=not json at all]]"]
    assert wrong_type["response"] is None and "field 'score': expected DOUBLE" in wrong_type["errorMessage"]
    assert not_json["response"] is None and "not json at all" in not_json["errorMessage"]
    assert result["fine"] == {"response": {"score": 1.5}, "errorMessage": None}


def test_return_type_converts_the_answer(con):
    assert con.sql("SELECT ai_query('chat', '[[reply=42]]', returnType => 'INT')").fetchall()[0] == (42,)
    assert con.sql("SELECT typeof(ai_query('chat', '[[reply=42]]', returnType => 'BIGINT'))").fetchall()[0] == ("BIGINT",)
    tags = con.sql("""SELECT ai_query('chat', '[[reply=["a","b"]]]', returnType => 'ARRAY<STRING>')""").fetchall()[0]
    assert tags == (["a", "b"],)


def test_fail_on_error_false_gives_a_struct_per_row_and_the_query_completes(con, server):
    result = con.sql("""SELECT p, ai_query('chat', p, failOnError => false) AS r
                        FROM (VALUES ('ok'), ('bad [[status=400]]')) t(p) ORDER BY p""")
    assert str(result.types[1]) == "STRUCT(response VARCHAR, errorMessage VARCHAR)"
    (bad, bad_r), (ok, ok_r) = result.fetchall()
    assert ok_r == {"response": "echo: ok", "errorMessage": None}
    assert bad_r["response"] is None
    assert "HTTP 400" in bad_r["errorMessage"] and "fake error 400" in bad_r["errorMessage"]
    assert "'chat'" in bad_r["errorMessage"]


def test_by_default_an_error_fails_the_query_naming_endpoint_status_and_message(con):
    with pytest.raises(Exception) as info:
        con.sql("SELECT ai_query('chat', p) FROM (VALUES ('ok'), ('bad [[status=400]]')) t(p)").fetchall()
    message = str(info.value)
    assert "endpoint 'chat'" in message and "HTTP 400" in message and "fake error 400" in message


def test_completions_endpoint(con, server):
    assert con.sql("SELECT ai_query('completions', 'Once upon')").fetchall()[0] == ("completion: Once upon",)
    body = server.bodies("/v1/completions")[0]
    assert body == {"model": "fake-completions", "prompt": "Once upon"}


def test_a_cursor_of_the_connection_has_ai_query_and_the_task_functions(con, server):
    cursor = con.cursor()
    assert cursor.sql("SELECT ai_query('chat', 'from a cursor'), ai_gen('hi', endpoint => 'chat')").fetchall() == [
        ("echo: from a cursor", "echo: hi")]
    assert cursor.cursor().sql("SELECT ai_query('chat', 'nested')").fetchall() == [("echo: nested",)]
    assert len(server.requests) == 3
