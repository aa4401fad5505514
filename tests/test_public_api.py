"""The public surface is listed once, in aiquery.__all__; this pins it, and the error tree the README documents."""

import re
from pathlib import Path

import aiquery
from aiquery import _errors

README = Path(__file__).resolve().parents[1] / "README.md"


def test_public_names():
    assert sorted(aiquery.__all__) == sorted([
        "AIQueryError", "AiohttpTransport", "ArgumentError", "BatchError", "BudgetExceeded", "CacheWarning", "ConfigError",
        "Endpoint", "Engine", "HTTPStatusError", "HttpxTransport", "OutputError", "QueryInterrupted", "RequestError",
        "RequestTimeout", "ResponseError", "TransportError", "UnknownEndpointError",
        "connect", "estimate", "explain", "hint", "register", "sql", "translate",
    ])
    assert all(hasattr(aiquery, name) for name in aiquery.__all__)


def _readme_tree() -> dict[str, str | None]:
    """class name -> its parent's, from the nested list in the README's "## Errors" section."""
    section = README.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for indent, name in re.findall(r"^( *)- `(\w+)`", section, flags=re.M):
        while stack and stack[-1][0] >= len(indent):
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((len(indent), name))
    return parents


def test_every_error_class_is_exported_and_where_the_readme_puts_it():
    defined = {name for name, value in vars(_errors).items()
               if isinstance(value, type) and issubclass(value, Exception) and issubclass(value, aiquery.AIQueryError)}
    tree = _readme_tree()
    assert set(tree) == defined  # the README lists every error class, and no other
    for name, parent in tree.items():
        cls = getattr(aiquery, name)  # importable from aiquery itself
        assert name in aiquery.__all__ and cls is getattr(_errors, name)
        assert cls.__bases__ == ((getattr(aiquery, parent),) if parent else (Exception,)), name
    assert issubclass(aiquery.CacheWarning, UserWarning) and "CacheWarning" in aiquery.__all__


def test_error_tree():
    assert issubclass(aiquery.UnknownEndpointError, aiquery.ArgumentError)
    for cls in (aiquery.HTTPStatusError, aiquery.TransportError, aiquery.ResponseError, aiquery.BatchError):
        assert issubclass(cls, aiquery.RequestError)
    assert issubclass(aiquery.RequestTimeout, aiquery.TransportError)
    for cls in (aiquery.ConfigError, aiquery.ArgumentError, aiquery.RequestError, aiquery.OutputError,
                aiquery.QueryInterrupted, aiquery.BudgetExceeded):
        assert issubclass(cls, aiquery.AIQueryError)


def test_attempts_is_declared_on_every_error():
    assert aiquery.AIQueryError.attempts is None  # declared with its default, documented on the class
    assert "attempts" in aiquery.AIQueryError.__doc__
    assert aiquery.BudgetExceeded("budget exceeded").attempts is None  # refused before any request was sent
    assert aiquery.RequestTimeout("x", endpoint="chat").attempts is None
