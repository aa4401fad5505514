"""The transport seam: transports know URLs, not endpoints. What they raise is one of the transport
errors of aiquery/_transport.py; the engine alone turns it into the error a user reads."""

import asyncio
import socket

import pytest

from aiquery import AiohttpTransport, HttpxTransport
from aiquery._http_process import ProcessTransport
from aiquery._transport import SendError, SendTimeout

TRANSPORTS = {"process": ProcessTransport, "aiohttp": AiohttpTransport, "httpx": HttpxTransport}


def _post(transport, url, timeout):
    async def go():
        try:
            return await transport.post(url, {"Content-Type": "application/json"}, b"{}", timeout)
        finally:
            await transport.aclose()
    return asyncio.run(go())


@pytest.fixture(params=list(TRANSPORTS))
def transport(request):
    return TRANSPORTS[request.param]()


def test_a_refused_connection_is_a_send_error_naming_no_endpoint(transport):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(SendError) as caught:
        _post(transport, f"http://127.0.0.1:{port}/v1/chat/completions", 5)
    assert not isinstance(caught.value, SendTimeout) and "endpoint" not in str(caught.value)


@pytest.mark.slow
def test_no_answer_in_time_is_a_send_timeout(transport):
    with socket.socket() as listening:  # accepts connections (the backlog) and never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        with pytest.raises(SendTimeout) as caught:
            _post(transport, f"http://127.0.0.1:{listening.getsockname()[1]}/v1/chat/completions", 0.5)
    assert "endpoint" not in str(caught.value)
