"""Wire bodies and response parsing, at the transport seam (httpx.MockTransport, no socket)."""

import json
import re

import httpx
import pytest

import aiquery
from aiquery import _wire
from aiquery._errors import ResponseError


def _chat_reply(content):
    return {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                      "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_requests_through_an_injected_httpx_transport():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), json.loads(request.content)))
        return httpx.Response(200, json=_chat_reply("hello back"))

    engine = aiquery.Engine(transport=aiquery.HttpxTransport(httpx.MockTransport(handler)))
    endpoints = {"m": {"base_url": "http://mock.local/v1", "model": "tiny"}}
    with aiquery.connect(endpoints=endpoints, engine=engine) as con:
        assert con.sql("SELECT ai_query('m', 'hello')").fetchall()[0] == ("hello back",)
    assert seen == [("http://mock.local/v1/chat/completions",
                     {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]})]


@pytest.mark.parametrize("payload, message", [
    (b"", "empty body"),
    (b'{"choices": [', "not JSON"),
    (b'{"object": "chat.completion"}', "without choices"),
    (json.dumps(_chat_reply(None)).encode(), "without choices[0].message.content"),
    (json.dumps(_chat_reply([{"type": "reasoning", "summary": []}])).encode(), "without choices[0].message.content"),
])
def test_chat_bodies_that_break_the_wire_format(payload, message):
    with pytest.raises(ResponseError, match=re.escape(message)):
        _wire.parse_chat(payload, "e", {})


@pytest.mark.parametrize("payload, message, retryable", [
    (b'{"choices": [', "a body that is not JSON", True),  # cut short on its way: may come whole next time
    (b'{"choices": [{"message": {"content": "\xc3', "a body that is not JSON", True),  # cut inside a character
    (b'{"choices": [{"message": {"content": "\xff\xfe"}}]}', "not valid UTF-8", False),
    (b"[" * 1100 + b"]" * 1100, "nested more than 1024 levels deep", False),
    (b'{"choices": [], "x": NaN}', "NaN, Infinity", False),
    (b'{"x": 1e400}', "NaN, Infinity", False),
    (b"data: {}\n\n", "server-sent event stream", False),
    (b"<html>oops</html>", "a body that is not JSON", True),
])
def test_bodies_that_do_not_parse_are_retried_only_if_they_may_change(payload, message, retryable):
    with pytest.raises(ResponseError, match=re.escape(message)) as info:
        _wire.parse_chat(payload, "e", {})
    assert info.value.retryable is retryable


def test_excerpts_of_long_bodies_say_how_long_they_were():
    with pytest.raises(ResponseError) as info:
        _wire.parse_chat(b'{"object": "' + b"x" * 1_000_000 + b'"}', "e", {})
    message = str(info.value)
    assert len(message) < 400 and message.endswith("... (1,000,014 bytes)")


def test_reasoning_blocks_keep_only_the_text():
    content = [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]},
               {"type": "text", "text": "4"}]
    answer = _wire.parse_chat(json.dumps(_chat_reply(content)).encode(), "e", {})
    assert answer.value == "4" and answer.usage["total_tokens"] == 5 and answer.finish_reason == "stop"


def test_embeddings_are_put_back_in_input_order():
    payload = {"data": [{"index": 1, "embedding": [1.0]}, {"index": 0, "embedding": [0.0]}]}
    vectors, _ = _wire.parse_embeddings(json.dumps(payload).encode(), "e", 2)
    assert vectors == [[0.0], [1.0]]
    with pytest.raises(ResponseError, match="answered 1 embeddings for 2 inputs"):
        _wire.parse_embeddings(json.dumps({"data": [{"index": 0, "embedding": [0.0]}]}).encode(), "e", 2)


@pytest.mark.parametrize("payload, text", [
    (b'{"error": {"message": "Rate limit reached", "type": "requests"}}', "Rate limit reached"),
    (b'{"error_code": "BAD_REQUEST", "message": "Invalid param"}', "BAD_REQUEST: Invalid param"),
    (b"<html><body><h1>502 Bad Gateway</h1></body></html>", "502 Bad Gateway"),
    (b"", "(empty body)"),
    (b"[" * 2000 + b"]" * 2000, "[" * 200 + "... (4,000 bytes)"),
    (b'{"error": {"message": "' + b"m" * 5_000_000 + b'"}}', "m" * 300 + "... (5,000,000 bytes)"),
    (b'{"error": {"message": "bad \\u001b]0;title\\u0007 \\u001b[2Jthing"}}', "bad  thing"),
])
def test_provider_error_messages_are_extracted(payload, text):
    assert _wire.error_text(payload) == text


@pytest.mark.parametrize("data, mime", [
    (b"\xff\xd8\xff\xdb" + b"\x00" * 8, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, "image/png"),
    (b"GIF89a" + b"\x00" * 8, "image/gif"),
    (b"GIF87a" + b"\x00" * 8, "image/gif"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8, "image/webp"),
])
def test_image_files_become_data_urls_of_their_type(data, mime):
    part = _wire.image_part(data)
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith(f"data:{mime};base64,")


def test_other_files_are_refused():
    with pytest.raises(aiquery.ArgumentError, match="not a JPEG, PNG, GIF or WebP image"):
        _wire.image_part(b"BM6\x00\x00\x00 a bitmap")
