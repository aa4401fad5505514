"""Engine(mounts=...): the transport for each URL scheme, as httpx's mounts= choose one per URL pattern."""

import orjson
import pytest

import aiquery
from aiquery._transport import Response


class Counting:
    """A transport of the test's own: counts the URLs it is given, sends them on through `inner`,
    or answers chat requests itself when it has none."""

    def __init__(self, inner=None):
        self.inner, self.urls, self.closed = inner, [], False

    async def post(self, url, headers, body, timeout, max_bytes=1 << 20):
        self.urls.append(url)
        if self.inner is not None:
            return await self.inner.post(url, headers, body, timeout, max_bytes)
        prompt = orjson.loads(body)["messages"][-1]["content"]
        answer = {"choices": [{"message": {"role": "assistant", "content": f"counted: {prompt}"},
                               "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        return Response(200, {}, orjson.dumps(answer))

    async def aclose(self):
        self.closed = True
        if self.inner is not None:
            await self.inner.aclose()


def test_a_mounted_transport_gets_the_requests_of_its_scheme(endpoints, server):
    http = Counting(aiquery.AiohttpTransport())
    engine = aiquery.Engine(mounts={"http://": http})
    con = aiquery.connect(endpoints={"chat": endpoints["chat"]}, engine=engine, cache=False)
    rows = con.sql("SELECT ai_query('chat', 'row ' || i) FROM range(50) t(i)").fetchall()
    assert sorted(r[0] for r in rows) == sorted(f"echo: row {i}" for i in range(50))
    assert len(http.urls) == len(server.requests) == 50  # every request went through it, and reached the server
    assert set(http.urls) == {server.openai_base + "/chat/completions"}
    engine.close()
    assert http.closed  # the engine closes what it was given, as its own


def test_local_urls_go_to_the_local_mount(endpoints, server):
    local = Counting()
    engine = aiquery.Engine(mounts={"local://": local})
    con = aiquery.connect(endpoints={"chat": endpoints["chat"]}, engine=engine, cache=False)
    assert con.sql("SELECT ai_query('local-chat', 'hi'), ai_query('chat', 'there')").fetchall() == [
        ("counted: hi", "echo: there")]
    assert local.urls == ["local://smollm2-135m-instruct/chat/completions"] and len(server.requests) == 1
    engine.close()


def test_a_scheme_with_no_transport_names_the_endpoint_and_the_scheme(endpoints, server):
    engine = aiquery.Engine(mounts={"http://": None})  # None unmounts: plain http is refused, https still goes
    con = aiquery.connect(endpoints={"chat": endpoints["chat"]}, engine=engine, cache=False)
    message = con.sql("SELECT ai_query('chat', 'hi', failOnError => false).errorMessage").fetchall()[0][0]
    assert message.startswith("endpoint 'chat': ") and "'http://'" in message and "https://, local://" in message
    assert server.requests == []
    engine.close()


@pytest.mark.parametrize("mounts, text", [
    ({"http": None}, "mounts key 'http' is not a URL scheme"),
    ({"https://": object()}, "mounts['https://'] has no async post"),
])
def test_mounts_that_cannot_work_are_refused_at_once(mounts, text):
    with pytest.raises(aiquery.ConfigError, match=text.replace("[", r"\[").replace("]", r"\]")):
        aiquery.Engine(mounts=mounts)
