"""The public surface is listed once, in aiquery.__all__; this pins it."""

import aiquery


def test_public_names():
    assert sorted(aiquery.__all__) == sorted([
        "AIQueryError", "AiohttpTransport", "ArgumentError", "BatchError", "CacheWarning", "ConfigError", "Endpoint", "Engine", "HTTPStatusError",
        "HttpxTransport", "OutputError", "QueryInterrupted", "RequestError", "ResponseError", "TransportError", "UnknownEndpointError",
        "connect", "estimate", "explain", "hint", "register", "sql", "translate",
    ])
    assert all(hasattr(aiquery, name) for name in aiquery.__all__)


def test_error_tree():
    assert issubclass(aiquery.UnknownEndpointError, aiquery.ArgumentError)
    for cls in (aiquery.HTTPStatusError, aiquery.TransportError, aiquery.ResponseError):
        assert issubclass(cls, aiquery.RequestError)
    for cls in (aiquery.ConfigError, aiquery.ArgumentError, aiquery.RequestError, aiquery.OutputError):
        assert issubclass(cls, aiquery.AIQueryError)
