"""Shared fixtures: a real fake server on 127.0.0.1 and connections whose endpoints point at it."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Connections of module-scoped fixtures open before `cache_dir` sets AIQUERY_CACHE_DIR: never the user's own cache
os.environ["AIQUERY_CACHE_DIR"] = tempfile.mkdtemp(prefix="aiquery-tests-")
atexit.register(shutil.rmtree, os.environ["AIQUERY_CACHE_DIR"], ignore_errors=True)

import aiquery  # noqa: E402
from aiquery import _cache  # noqa: E402
from fakebatch import FakeBatchServer  # noqa: E402

CANARY_KEY = "sk-canary-7f3a9c1e5b"  # must never show up in anything a user can see


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Each test starts with an empty response cache of its own (the cache is on by default)."""
    path = tmp_path_factory.mktemp("aiquery-cache")
    monkeypatch.setenv("AIQUERY_CACHE_DIR", str(path))
    yield path
    _cache.close_all()


@pytest.fixture
def server():
    """tests/fakeserver.py's server, with the batch API of tests/fakebatch.py beside its routes."""
    with FakeBatchServer(api_key=CANARY_KEY) as s:
        yield s


@pytest.fixture
def endpoints(server, monkeypatch, tmp_path):
    """One endpoint of each kind, all pointing at the fake server, keys from the environment."""
    monkeypatch.setenv("FAKE_KEY", CANARY_KEY)
    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", CANARY_KEY)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    openai = {"provider": "openai", "base_url": server.openai_base, "api_key_env": "FAKE_KEY",
              "batch_poll_interval": 0.05}  # batch => true: the fake's batches move on per poll
    return {
        "chat": {**openai, "task": "chat", "model": "fake-chat"},
        "completions": {**openai, "task": "completions", "model": "fake-completions"},
        "embed": {**openai, "task": "embeddings", "model": "fake-embed", "batch_size": 4},
        "db-chat": {"provider": "databricks", "task": "chat", "model": "databricks-llama"},
        "db-embed": {"provider": "databricks", "task": "embeddings", "model": "databricks-gte"},
        "db-custom": {"provider": "databricks", "task": "custom", "model": "house-prices"},
    }


@pytest.fixture
def con(endpoints):
    connection = aiquery.connect(endpoints=endpoints)
    yield connection
    connection.close()

