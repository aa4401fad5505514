"""The rest of the serving API from SQL: n choices, provider extras, tools and tool calls, and
normalised embeddings. Each asserts the column a user gets and the body the server received."""

import json
import math

import pytest

import aiquery

TOOL_TYPE = "STRUCT(\"content\" VARCHAR, tool_calls STRUCT(id VARCHAR, \"name\" VARCHAR, arguments VARCHAR)[])"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"},
                                                                        "utc": {"type": "boolean"}}}}}
# The same two tools written as SQL structs: DuckDB gives each list element every field of the
# other (get_weather gets "zone": NULL, get_time gets "description": NULL ...); those are not sent.
TOOLS_SQL = """[{'type': 'function', 'function': {'name': 'get_weather', 'description': 'The weather in a city',
                  'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city']}}},
                {'type': 'function', 'function': {'name': 'get_time',
                  'parameters': {'type': 'object', 'properties': {'zone': {'type': 'string'},
                                                                  'utc': {'type': 'boolean'}}}}}]"""


def one(con, sql):
    return con.sql(sql).fetchall()[0][0]


# ---- n choices


@pytest.mark.parametrize("endpoint,first", [("completions", "completion: hi"), ("chat", "echo: hi"),
                                            ("db-chat", "echo: hi")])
def test_n_choices_give_the_first_by_default_and_all_with_an_array_return_type(con, server, endpoint, first):
    assert one(con, f"SELECT ai_query('{endpoint}', 'hi', modelParameters => {{'n': 3}})") == first
    every = one(con, f"SELECT ai_query('{endpoint}', 'hi', modelParameters => {{'n': 3}}, "
                     "returnType => 'ARRAY<STRING>')")
    assert every == [first, f"{first} (choice 2)", f"{first} (choice 3)"]
    assert one(con, f"SELECT typeof(ai_query('{endpoint}', 'hi', modelParameters => {{'n': 3}}, "
                    "returnType => 'ARRAY<STRING>'))") == "VARCHAR[]"
    # returnType only shapes the answer: the second call is the same request, answered from the cache.
    assert [b["n"] for b in server.bodies()] == [3]


def test_each_choice_is_converted_to_the_array_element_type(con, server):
    result = con.sql("""SELECT ai_query('chat', 'x [[reply={"label": "fresh", "score": 0.5}]]',
                                        modelParameters => {'n': 2},
                                        responseFormat => 'STRUCT<label: STRING, score: DOUBLE>',
                                        returnType => 'ARRAY<STRUCT<label: STRING, score: DOUBLE>>')""").fetchall()
    assert result == [([{"label": "fresh", "score": 0.5}] * 2,)]
    assert server.bodies()[0]["response_format"]["type"] == "json_schema"
    assert one(con, "SELECT ai_query('completions', 'x [[reply=7]]', modelParameters => {'n': 3}, "
                    "returnType => 'ARRAY<INT>')") == [7, 7, 7]


def test_a_server_that_ignores_n_is_an_error_not_fewer_answers(con, server):
    result = one(con, "SELECT ai_query('chat', 'x [[choices=1]]', modelParameters => {'n': 3}, "
                      "returnType => 'ARRAY<STRING>', failOnError => false)")
    assert result["response"] is None
    assert "answered 1 choice(s) where n = 3 asked for 3: the server may not support n" in result["errorMessage"]
    with pytest.raises(Exception, match="'n' is the number of choices, 1 or more"):
        con.sql("SELECT ai_query('chat', 'x', modelParameters => {'n': 0})").fetchall()


def test_n_from_the_endpoint_settings_works_the_same(endpoints, server):
    endpoints["chat"]["model_parameters"] = {"n": 2}
    with aiquery.connect(endpoints=endpoints) as con:
        assert one(con, "SELECT ai_query('chat', 'hi', returnType => 'ARRAY<STRING>')") == [
            "echo: hi", "echo: hi (choice 2)"]
        assert one(con, "SELECT ai_query('chat', 'hi 2')") == "echo: hi 2"


# ---- provider extras


@pytest.mark.parametrize("endpoint", ["chat", "db-chat", "completions"])
def test_parameters_aiquery_does_not_know_reach_the_body_untouched(con, server, endpoint):
    con.sql(f"""SELECT ai_query('{endpoint}', 'hi', modelParameters => {{
                    'top_k': 40, 'repetition_penalty': 1.1, 'min_p': 0.05, 'enable_safety_filter': true,
                    'extra_params': {{'top_p': 0.9, 'stop_sequences': ['##']}}, 'logit_bias': MAP {{'50256': -100}}}})
             """).fetchall()
    body = server.bodies()[0]
    assert {k: body[k] for k in ("top_k", "repetition_penalty", "min_p", "enable_safety_filter", "extra_params",
                                 "logit_bias")} == {
        "top_k": 40, "repetition_penalty": 1.1, "min_p": 0.05, "enable_safety_filter": True,
        "extra_params": {"top_p": 0.9, "stop_sequences": ["##"]}, "logit_bias": {"50256": -100}}
    assert ("model" in body) == (endpoint != "db-chat")


def test_extras_from_the_endpoint_merge_with_the_call_which_wins(endpoints, server):
    endpoints["db-custom"]["model_parameters"] = {"params": {"threshold": 0.5}, "client_request_id": "batch-7"}
    endpoints["embed"]["model_parameters"] = {"dimensions": 8, "user": "etl"}
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql("SELECT ai_query('db-custom', {'rooms': 3}, modelParameters => {'params': {'threshold': 0.9}})"
                ).fetchall()
        con.sql("SELECT ai_query('embed', 'hi', modelParameters => {'user': 'me'})").fetchall()
    custom, embed = server.bodies()
    assert custom == {"dataframe_records": [{"rooms": 3}], "params": {"threshold": 0.9}, "client_request_id": "batch-7"}
    assert embed == {"input": ["hi"], "model": "fake-embed", "dimensions": 8, "user": "me"}


@pytest.mark.parametrize("params,message", [
    ("{'response_format': {'type': 'json_object'}}", "it comes from the responseFormat argument"),
    ("{'stream': true}", "it comes from ai_query, which reads whole answers"),
    ("{'encoding_format': 'base64'}", "encoding_format 'base64' is not read back"),
])
def test_parameters_that_would_break_the_answer_are_refused_before_sending(con, server, params, message):
    with pytest.raises(Exception, match=message):
        con.sql(f"SELECT ai_query('embed', 'hi', modelParameters => {params})").fetchall()
    assert server.requests == []


# ---- tools


def test_a_tool_call_is_a_typed_struct_column_and_the_tools_reach_the_wire_as_json(con, server):
    sql = f"SELECT ai_query('chat', 'weather in Oslo?', modelParameters => {{'tools': {TOOLS_SQL}, " \
          "'tool_choice': 'required'})"
    assert one(con, f"SELECT typeof(({sql}))") == TOOL_TYPE
    answer = one(con, sql)
    assert answer["content"] is None
    (call,) = answer["tool_calls"]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "sample"}
    assert call["id"].startswith("call_")
    body = server.bodies()[0]
    assert body["tools"] == [WEATHER, CLOCK] and body["tool_choice"] == "required"


def test_tools_as_json_text_a_named_function_and_an_answer_in_text(con, server):
    tools = json.dumps([WEATHER, CLOCK])
    named = json.dumps({"type": "function", "function": {"name": "get_time"}})
    call = one(con, f"SELECT ai_query('db-chat', 'what time is it?', modelParameters => "
                    f"{{'tools': '{tools}', 'tool_choice': '{named}'}})")
    assert [c["name"] for c in call["tool_calls"]] == ["get_time"]
    assert json.loads(call["tool_calls"][0]["arguments"]) == {"zone": "sample", "utc": True}
    text = one(con, f"SELECT ai_query('db-chat', 'just say hi', modelParameters => {{'tools': '{tools}'}})")
    assert text == {"content": "echo: just say hi", "tool_calls": []}
    bodies = server.bodies()
    assert bodies[0]["tools"] == [WEATHER, CLOCK] and bodies[0]["tool_choice"] == json.loads(named)
    assert "tool_choice" not in bodies[1]


def test_tool_results_go_back_as_messages(con, server):
    answer = one(con, f"""SELECT ai_query('chat', [
        {{'role': 'user', 'content': 'weather in Oslo?'}},
        {{'role': 'assistant', 'content': NULL, 'tool_calls': [{{'id': 'call_1', 'type': 'function',
            'function': {{'name': 'get_weather', 'arguments': '{{"city": "Oslo"}}'}}}}]}},
        {{'role': 'tool', 'tool_call_id': 'call_1', 'content': '{{"celsius": 21}}'}}],
        modelParameters => {{'tools': {TOOLS_SQL}}})""")
    assert answer == {"content": "echo: weather in Oslo?", "tool_calls": []}  # the fake echoes the user
    messages = server.bodies()[0]["messages"]
    assert messages[1] == {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'}


def test_tool_call_arguments_that_are_not_json_fail_that_row(con, server):
    result = one(con, f"SELECT ai_query('chat', 'x [[call]] [[args=city: Oslo]]', failOnError => false, "
                      f"modelParameters => {{'tools': {TOOLS_SQL}}})")
    assert result["response"] is None
    assert "the model called tool 'get_weather' with arguments that are not JSON: 'city: Oslo'" in \
        result["errorMessage"]


def test_tools_with_responseformat_type_the_content(con, server):
    sql = f"""SELECT ai_query('chat', 'x', responseFormat => 'STRUCT<label: STRING>',
                              modelParameters => {{'tools': {TOOLS_SQL}, 'tool_choice': 'auto'}},
                              failOnError => false)"""
    assert one(con, f"SELECT typeof(({sql}))") == \
        "STRUCT(response STRUCT(\"content\" STRUCT(\"label\" VARCHAR), tool_calls STRUCT(id VARCHAR, " \
        "\"name\" VARCHAR, arguments VARCHAR)[]), errorMessage VARCHAR)"
    assert one(con, sql)["response"] == {"content": {"label": "sample"}, "tool_calls": []}


@pytest.mark.slow
@pytest.mark.parametrize("sql,message", [
    ("ai_query('chat', 'x', modelParameters => {'tools': TOOLS, 'tool_choice': "
     "'{\"type\": \"function\", \"function\": {\"name\": \"nope\"}}'})",
     "names function 'nope', which is not in tools"),
    ("ai_query('chat', 'x', modelParameters => {'tool_choice': 'required'})", "tool_choice needs tools"),
    ("ai_query('chat', 'x', modelParameters => {'tools': [{'type': 'function'}]})", r"tools\[1\] must be"),
    ("ai_query('chat', 'x', modelParameters => {'tools': '[not json'})", "tools is not valid JSON"),
    ("ai_query('chat', 'x', modelParameters => {'tools': TOOLS, 'n': 2})", "tools with n > 1 is not supported"),
    ("ai_query('embed', 'x', modelParameters => {'tools': TOOLS})", "modelParameters tools applies to chat endpoints"),
    ("ai_gen('x', endpoint => 'chat', modelParameters => {'tools': TOOLS})", "tools work with ai_query only"),
    ("ai_classify('x', ['a', 'b'], endpoint => 'chat', modelParameters => {'tools': TOOLS})",
     "tools work with ai_query only"),
])
def test_tools_that_cannot_work_are_refused_before_sending(con, server, sql, message):
    with pytest.raises(Exception, match=message):
        con.sql("SELECT " + sql.replace("TOOLS", TOOLS_SQL)).fetchall()
    assert server.requests == []


def test_tools_in_endpoint_settings_are_refused_naming_the_call(endpoints):
    endpoints["chat"]["model_parameters"] = {"tools": [WEATHER]}
    with pytest.raises(aiquery.ConfigError, match="tools belongs in the modelParameters of an ai_query call"):
        aiquery.connect(endpoints=endpoints)


# ---- normalised embeddings


def norm(vector):
    return math.sqrt(sum(x * x for x in vector))


def test_normalize_scales_vectors_to_unit_length(con, server):
    raw = one(con, "SELECT ai_query('embed', 'hi [[scale=3]]')")
    assert norm(raw) == pytest.approx(3, rel=1e-5)
    unit = one(con, "SELECT ai_query('embed', 'hi [[scale=3]]', normalize => true)")
    assert norm(unit) == pytest.approx(1, rel=1e-5)
    assert unit == pytest.approx([x / 3 for x in raw], rel=1e-5)
    assert one(con, "SELECT ai_embed('hi [[scale=3]]', endpoint => 'embed', normalize => true)") == unit
    assert len(server.requests) == 1  # one answer, cached, shaped three ways
    # The documented check for an endpoint whose vectors may not be unit length:
    assert con.sql("""SELECT count(*) FILTER (WHERE abs(sqrt(list_inner_product(e, e)) - 1) > 1e-3)
                      FROM (SELECT ai_query('embed', 'text ' || i || ' [[scale=2]]') AS e FROM range(3) t(i))
                   """).fetchall() == [(3,)]


def test_normalize_as_an_endpoint_setting_and_its_errors(endpoints, server):
    endpoints["embed"]["normalize"] = True
    with aiquery.connect(endpoints=endpoints) as con:
        assert norm(one(con, "SELECT ai_query('embed', 'hi [[scale=5]]')")) == pytest.approx(1, rel=1e-5)
        assert norm(one(con, "SELECT ai_query('embed', 'hi [[scale=5]]', normalize => false)")) == \
            pytest.approx(5, rel=1e-5)
        zero = one(con, "SELECT ai_query('embed', 'hi [[scale=0]]', failOnError => false)")
        assert zero["response"] is None and "cannot be scaled to unit length" in zero["errorMessage"]
        with pytest.raises(Exception, match="normalize applies to embeddings endpoints only"):
            con.sql("SELECT ai_query('chat', 'hi', normalize => true)").fetchall()
    endpoints["chat"]["normalize"] = True
    with pytest.raises(aiquery.ConfigError, match="normalize applies to embeddings endpoints only"):
        aiquery.connect(endpoints=endpoints)


def test_tools_in_a_column_of_model_parameters_and_rows_without_tools(con, server):
    # modelParameters as a column: the type comes from its fields, so every row is STRUCT(content, tool_calls),
    # including a row whose tools are NULL (nothing offered: a text answer, no calls).
    result = con.sql(f"""SELECT i, ai_query('chat', 'x ' || i, modelParameters => p) AS a
                         FROM (VALUES (1, {{'tools': {TOOLS_SQL}, 'tool_choice': 'required'}}),
                                      (2, {{'tools': NULL, 'tool_choice': NULL}})) t(i, p)
                         ORDER BY i""").fetchall()
    assert [r[1]["tool_calls"][0]["name"] if r[1]["tool_calls"] else r[1]["content"] for r in result] == [
        "get_weather", "echo: x 2"]
    assert ["tools" in b for b in sorted(server.bodies(), key=lambda b: b["messages"][0]["content"])] == [True, False]
    with pytest.raises(Exception, match="tools need modelParameters to be a struct"):
        con.sql(f"SELECT ai_query('chat', 'x', modelParameters => MAP {{'tools': '{json.dumps([WEATHER])}'}})"
                ).fetchall()


def test_a_nested_field_named_tools_is_not_tools(con, server):
    assert one(con, "SELECT ai_query('chat', 'hi', modelParameters => {'extra_params': {'tools': 'none'}})") == \
        "echo: hi"
    assert server.bodies()[0]["extra_params"] == {"tools": "none"}
