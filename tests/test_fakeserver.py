"""Tests for the fake OpenAI / Databricks server the rest of the suite relies on."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fakeserver import FakeServer, parse_directives, sample_for_schema, split_options
from waiting import wait_for

# One shared client: creating one per request (httpx.post) costs ~20 ms of TLS setup each time.
http = httpx.Client(timeout=5)


def chat(s: FakeServer, content, model: str = "m", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return http.post(s.openai_base + "/chat/completions", json=body)


def invoke(s: FakeServer, endpoint: str, body: dict, **kw) -> httpx.Response:
    return http.post(f"{s.url}/serving-endpoints/{endpoint}/invocations", json=body, **kw)


# ---------------------------------------------------------------- wire formats


def test_chat_wire_format_and_recording():
    with FakeServer() as s:
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ]
        r = http.post(s.openai_base + "/chat/completions", json={"model": "gpt-x", "messages": messages},
                       headers={"X-Custom": "yes"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        data = r.json()
        assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
        assert isinstance(data["created"], int) and data["model"] == "gpt-x"
        assert data["choices"] == [
            {"index": 0, "message": {"role": "assistant", "content": "echo: hello there world"},
             "finish_reason": "stop"}
        ]
        assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}

        (rec,) = s.requests
        assert (rec.method, rec.path, rec.status) == ("POST", "/v1/chat/completions", 200)
        assert rec.headers["x-custom"] == "yes" and rec.body["messages"] == messages
        assert json.loads(rec.raw) == rec.body
        assert s.bodies("/chat/completions") == [rec.body] and s.bodies("/embeddings") == []


def test_chat_vision_n_and_json_object():
    with FakeServer() as s:
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        parts = [{"type": "text", "text": "what is"}, image, {"type": "text", "text": "this"}, image]
        assert chat(s, parts).json()["choices"][0]["message"]["content"] == "echo: what is this +2 image(s)"

        bad = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
        r = chat(s, bad)
        assert r.status_code == 400 and "data:image/" in r.json()["error"]["message"]

        choices = chat(s, "hi", n=3, response_format={"type": "json_object"}).json()["choices"]
        assert [c["index"] for c in choices] == [0, 1, 2]
        assert {json.loads(c["message"]["content"])["echo"] for c in choices} == {"hi"}


def conforms(value, schema) -> bool:
    kind = schema.get("type")
    if isinstance(kind, list):
        return any(conforms(value, {**schema, "type": k}) for k in kind)
    if "enum" in schema:
        return value in schema["enum"]
    if kind == "object":
        return set(value) == set(schema["properties"]) and all(
            conforms(value[k], sub) for k, sub in schema["properties"].items()
        )
    checks = {
        "array": lambda: isinstance(value, list) and all(conforms(v, schema["items"]) for v in value),
        "string": lambda: isinstance(value, str),
        "integer": lambda: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda: isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": lambda: isinstance(value, bool),
        "null": lambda: value is None,
    }
    return checks[kind]()


def test_json_schema_sample_conforms():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "mood": {"type": "string", "enum": ["happy", "sad"]},
            "age": {"type": "integer"},
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "nick": {"type": ["null", "string"]},
            "address": {"type": "object", "properties": {"zip": {"type": "integer"}}},
        },
    }
    with FakeServer() as s:
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
        value = json.loads(chat(s, "hi", response_format=fmt).json()["choices"][0]["message"]["content"])
    assert conforms(value, schema) and value["mood"] == "happy" and value["tags"] == ["sample"]
    assert value["nick"] == "sample" and value["address"] == {"zip": 1}
    # pydantic-style nullable nested model
    ref = {"$defs": {"P": {"type": "object", "properties": {"x": {"type": "number"}}}},
           "type": "object", "properties": {"p": {"anyOf": [{"$ref": "#/$defs/P"}, {"type": "null"}]}}}
    assert sample_for_schema(ref) == {"p": {"x": 1.5}}


def test_completions_string_and_list():
    with FakeServer() as s:
        url = s.openai_base + "/completions"
        data = http.post(url, json={"model": "c", "prompt": "once upon"}).json()
        assert data["object"] == "text_completion" and data["id"].startswith("cmpl-") and data["model"] == "c"
        assert data["choices"] == [
            {"text": "completion: once upon", "index": 0, "logprobs": None, "finish_reason": "stop"}
        ]
        assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        data = http.post(url, json={"model": "c", "prompt": ["a", "b [[finish=length]]"]}).json()
        assert [c["text"] for c in data["choices"]] == ["completion: a", "completion: b [[finish=length]]"]
        assert {c["finish_reason"] for c in data["choices"]} == {"length"}


def test_embeddings_deterministic_unit_norm():
    with FakeServer(embedding_dim=40) as s:
        url = s.openai_base + "/embeddings"
        data = http.post(url, json={"model": "e", "input": ["alpha beta", "gamma"]}).json()
        assert data["object"] == "list" and data["model"] == "e"
        assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        assert [(d["object"], d["index"]) for d in data["data"]] == [("embedding", 0), ("embedding", 1)]
        first, second = (d["embedding"] for d in data["data"])
        assert len(first) == 40 and first != second
        assert math.isclose(sum(v * v for v in first), 1.0) and math.isclose(sum(v * v for v in second), 1.0)
        again = http.post(url, json={"model": "e", "input": "gamma"}).json()["data"][0]["embedding"]
        assert again == second

        quirk = http.post(url, json={"model": "e", "input": ["a b c [[per_token_embeddings]]", "d"]}).json()
        per_token = [d["embedding"] for d in quirk["data"]]
        assert [len(v) for v in per_token] == [4, 1] and all(len(t) == 40 for v in per_token for t in v)


def test_databricks_tasks_are_inferred_from_the_body():
    with FakeServer() as s:
        chat_reply = invoke(s, "my-llm", {"messages": [{"role": "user", "content": "hi"}]}).json()
        assert chat_reply["model"] == "my-llm" and chat_reply["choices"][0]["message"]["content"] == "echo: hi"
        completion = invoke(s, "my-llm", {"prompt": "p"}).json()
        assert completion["object"] == "text_completion" and completion["model"] == "my-llm"
        embedding = invoke(s, "bge", {"input": ["x"]}).json()
        assert embedding["model"] == "bge" and len(embedding["data"][0]["embedding"]) == 8

        records = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
        assert invoke(s, "m", {"dataframe_records": records}).json() == {"predictions": records}
        split = {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}
        assert invoke(s, "m", {"dataframe_split": split}).json() == {"predictions": records}
        assert invoke(s, "m", {"inputs": ["u", "v"]}).json() == {"predictions": ["u", "v"]}
        assert invoke(s, "m", {"instances": [[1, 2]]}).json() == {"predictions": [[1, 2]]}
        r = invoke(s, "m", {"record": 1})
        assert r.status_code == 400 and r.json()["error_code"] == "BAD_REQUEST"
        # a directive in the first record applies to custom models too
        assert invoke(s, "m", {"dataframe_records": [{"q": "[[status=500]]"}]}).status_code == 500


def test_request_errors():
    with FakeServer() as s:
        r = http.post(s.openai_base + "/chat/completions", json={"messages": []})
        assert r.status_code == 400 and "model" in r.json()["error"]["message"]
        r = http.post(s.openai_base + "/chat/completions", content=b"not json")
        assert r.status_code == 400 and s.requests[-1].body is None and s.requests[-1].raw == b"not json"
        for r in (http.post(s.url + "/v1/nope", json={}), http.get(s.openai_base + "/chat/completions")):
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert [rec.status for rec in s.requests] == [400, 400, 404, 404]


def test_auth_bearer_and_basic():
    with FakeServer(api_key="sekret") as s:
        body = {"model": "m", "prompt": "x"}
        url = s.openai_base + "/completions"
        denied = http.post(url, json=body)
        assert denied.status_code == 401 and denied.json() == {"error": {
            "message": "Invalid API key provided", "type": "invalid_request_error", "param": None,
            "code": "invalid_api_key"}}
        assert http.post(url, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.post(url, json=body, headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert http.post(url, json=body, auth=("token", "sekret")).status_code == 200
        assert http.post(url, json=body, auth=("user", "sekret")).status_code == 401

        denied = invoke(s, "e", body)
        assert denied.status_code == 401 and denied.json()["error_code"] == "UNAUTHENTICATED"
        assert invoke(s, "e", body, auth=("token", "sekret")).status_code == 200
        assert s.requests[2].headers["authorization"] == "Bearer sekret"


# ---------------------------------------------------------------- directives


def test_parse_directives():
    text = 'a [[sleep=0.1]] [[reasoning]] [[reply={"x": [[1], [2]]}]] tail'
    assert parse_directives(text) == {"sleep": "0.1", "reasoning": None, "reply": '{"x": [[1], [2]]}'}
    assert parse_directives("[[status=503 times=2]]") == {"status": "503 times=2"}
    assert parse_directives("[[reset times=1]] [[sleep=3 times=1]]") == {"reset": "times=1", "sleep": "3 times=1"}
    assert split_options("503 times=2 retry_after=1") == ("503", {"times": "2", "retry_after": "1"})
    assert split_options("times=1") == (None, {"times": "1"}) and split_options(None) == (None, {})
    assert parse_directives("[[not a directive]] [[neither ]]") == {}
    assert parse_directives("no directives [[ here") == {}


def test_status_times_then_success_with_retry_headers():
    with FakeServer() as s:
        text = "row 7 [[status=503 times=2 retry_after=1 retry_after_ms=250]]"
        first, second, third = (chat(s, text) for _ in range(3))
        assert first.status_code == second.status_code == 503
        assert first.json()["error"]["message"] == "fake error 503"
        assert first.headers["retry-after"] == "1" and first.headers["retry-after-ms"] == "250"
        assert third.status_code == 200
        # the count is per body: another body with the same directive fails afresh
        assert chat(s, text, model="other").status_code == 503
        assert chat(s, "[[status=429]]").status_code == chat(s, "[[status=429]]").status_code == 429
        assert [r.status for r in s.requests] == [503, 503, 200, 503, 429, 429]


def test_every_fault_directive_can_be_transient():
    with FakeServer() as s:
        def statuses(text, n=3, client=http):
            out = []
            for _ in range(n):
                try:
                    out.append(client.post(s.openai_base + "/chat/completions",
                                           json={"model": "m", "messages": [{"role": "user", "content": text}]}))
                except httpx.TransportError as exc:
                    out.append(exc)
            return out

        html = statuses("a [[html times=2]]")
        assert [r.status_code for r in html] == [502, 502, 200]
        assert html[0].text == "<html><body><h1>502 Bad Gateway</h1></body></html>"
        assert html[2].json()["choices"][0]["message"]["content"] == "echo: a [[html times=2]]"

        page = statuses("b [[html=503 times=1 retry_after=2]]", 2)
        assert [r.status_code for r in page] == [503, 200]
        assert page[0].headers["content-type"].startswith("text/html") and page[0].headers["retry-after"] == "2"
        assert "503 Service Unavailable" in page[0].text

        malformed = statuses("c [[malformed times=1]]", 2)
        with pytest.raises(json.JSONDecodeError):
            malformed[0].json()
        assert malformed[1].json()["choices"][0]["message"]["content"] == "echo: c [[malformed times=1]]"

        nofields = statuses("d [[nofields times=1]]", 2)
        assert nofields[0].json() == {"object": "chat.completion"} and "choices" in nofields[1].json()

        empty = statuses("e [[empty times=1]]", 2)
        assert empty[0].content == b"" and "choices" in empty[1].json()

        reset = statuses("f [[reset times=1]]", 2)
        assert isinstance(reset[0], httpx.TransportError) and reset[1].status_code == 200

        assert [r.status_code for r in statuses("g [[redirect=http://127.0.0.1:1/x times=1]]", 2)] == [307, 200]
        # without times a fault stays: the permanent forms are unchanged
        assert [r.status_code for r in statuses("h [[html]] [[status=500]]", 2)] == [502, 502]

        # fault records: which directive shaped each answer (None for a normal one)
        faults = [(r.fault, r.status) for r in s.requests]
        assert faults[:3] == [("html", 502), ("html", 502), (None, 200)]
        assert ("malformed", 200) in faults and ("nofields", 200) in faults and ("reset", 0) in faults
        assert ("redirect", 307) in faults and faults[-2:] == [("html", 502), ("html", 502)]


@pytest.mark.slow
def test_a_transient_sleep_answers_a_retry_at_once_and_a_hung_up_client_is_not_answered():
    with FakeServer() as s:
        text = "slow [[sleep=1 times=1]]"
        with httpx.Client(timeout=0.3) as impatient:
            with pytest.raises(httpx.TimeoutException):
                chat_with(impatient, s, text)
        wait_for(lambda: s.requests, what="the first arrival")
        assert chat(s, text).status_code == 200
        first, second = s.requests
        wait_for(lambda: first.answered, what="the first handler to finish its sleep")
        assert (first.fault, first.status) == ("sleep", 0)  # with no one left to answer
        assert (second.fault, second.status) == (None, 200)  # the second arrival did not sleep


def test_times_counts_arrivals_per_directive_and_body():
    with FakeServer() as s:
        # two transient faults on one body: each counts every arrival, the first in FAULTS order wins
        text = "x [[status=503 times=2]] [[reset times=1]]"
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(chat(s, text).status_code)
            except httpx.TransportError:
                outcomes.append("reset")
        assert outcomes == ["reset", 503, 200]
        assert [r.fault for r in s.requests] == ["reset", "status", None]
        with pytest.raises(httpx.TransportError):  # another body is counted afresh
            chat(s, text, model="other")
        bad = chat(s, "y [[reset times=x]]")
        assert bad.status_code == 400 and "bad directive: [[reset times=x]]" in bad.json()["error"]["message"]


def chat_with(client: httpx.Client, s: FakeServer, content: str) -> httpx.Response:
    return client.post(s.openai_base + "/chat/completions",
                       json={"model": "m", "messages": [{"role": "user", "content": content}]})


def test_reply_finish_tokens_and_reasoning():
    with FakeServer() as s:
        data = chat(s, 'go [[finish=length]] [[tokens=11,22]] [[reply={"a": [1, [2]]}]]').json()
        assert json.loads(data["choices"][0]["message"]["content"]) == {"a": [1, [2]]}
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"] == {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}

        content = chat(s, "think [[reasoning]]").json()["choices"][0]["message"]["content"]
        assert content == [
            {"type": "reasoning",
             "summary": [{"type": "summary_text", "text": "thinking about it", "signature": "sig"}]},
            {"type": "text", "text": "echo: think [[reasoning]]"},
        ]


def test_broken_answers():
    with FakeServer() as s:
        html = chat(s, "[[html]]")
        assert html.status_code == 502 and html.headers["content-type"].startswith("text/html")
        assert html.text == "<html><body><h1>502 Bad Gateway</h1></body></html>"

        malformed = chat(s, "[[malformed]]")
        assert malformed.status_code == 200 and malformed.headers["content-type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            malformed.json()
        assert chat(s, "[[nofields]]").json() == {"object": "chat.completion"}
        empty = chat(s, "[[empty]]")
        assert empty.status_code == 200 and empty.content == b""

        redirect = chat(s, "[[redirect=http://127.0.0.1:1/elsewhere]]")
        assert redirect.status_code == 307 and redirect.headers["location"] == "http://127.0.0.1:1/elsewhere"


def test_reset_gives_a_connection_error():
    with FakeServer() as s:
        with pytest.raises(httpx.TransportError):
            chat(s, "boom [[reset]]")
        assert chat(s, "still alive").status_code == 200
        assert [r.status for r in s.requests] == [0, 200]


# ---------------------------------------------------------------- timing and concurrency


@pytest.mark.slow
def test_max_concurrency_rejects_with_retry_after_and_peak_stays_within_limit():
    with FakeServer(max_concurrency=3, latency=0.3) as s:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda i: chat(s, f"row {i}"), range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429} and statuses.count(200) >= 3
        rejected = [r for r in responses if r.status_code == 429]
        assert all(r.headers["retry-after"] == "0" for r in rejected)
        assert rejected[0].json()["error"]["code"] == "rate_limit_exceeded"
        assert s.peak_in_flight == 3
        assert sorted(r.status for r in s.requests) == statuses

    with FakeServer(max_concurrency=1, latency=0.2, retry_after=None) as s:
        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(lambda i: chat(s, str(i)), range(2)))
        (rejected,) = [r for r in responses if r.status_code == 429]
        assert "retry-after" not in rejected.headers and s.peak_in_flight == 1


@pytest.mark.slow
def test_latency_callable_and_sleep_directive():
    def latency(body: dict) -> float:
        return 0.25 if "slow" in body["messages"][-1]["content"] else 0.0

    with FakeServer(latency=latency) as s:
        for text in ("fast", "slow", "fast [[sleep=0.25]]"):
            assert chat(s, text).status_code == 200
        # the server's own clock: a delay is never shorter than asked (a busy machine only adds to it)
        delays = [r.answered - r.arrived for r in s.requests]
        assert delays[1] >= 0.25 and delays[2] >= 0.25


def test_reset_clears_requests_peak_and_counters():
    with FakeServer() as s:
        text = "[[status=500 times=1]]"
        assert chat(s, text).status_code == 500 and chat(s, text).status_code == 200
        assert s.requests and s.peak_in_flight == 1
        s.reset()
        assert s.requests == [] and s.peak_in_flight == 0 and s.bodies() == []
        assert chat(s, text).status_code == 500  # the times counter starts over
        assert chat(s, "x").json()["id"] == "chatcmpl-1"


def test_start_stop_lifecycle():
    s = FakeServer()
    assert s.start() is s and s.url.startswith("http://127.0.0.1:") and s.openai_base == s.url + "/v1"
    s.stop()
    s.stop()
    with pytest.raises(httpx.ConnectError):
        http.post(s.openai_base + "/completions", json={"model": "m", "prompt": "x"})

