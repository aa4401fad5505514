"""Docs that run: every SQL file under sql/ executes, and the README's SQL is copied from them."""

import re
from pathlib import Path

import duckdb
import pytest

import aiquery

ROOT = Path(__file__).resolve().parent.parent
SQL_FILES = sorted((ROOT / "sql").glob("*.sql"))


@pytest.mark.parametrize("path", SQL_FILES, ids=lambda p: p.name)
def test_sql_file_runs(path, endpoints, server):
    settings = {"chat": endpoints["chat"], "embed": endpoints["embed"]}
    with aiquery.connect(endpoints=settings) as con:
        results = []
        for statement in duckdb.extract_statements(path.read_text()):
            results.append(con.execute(statement).fetchall())
    assert any(results), f"{path.name} returned no rows at all"
    assert server.requests, f"{path.name} sent no request"
    assert all(r.status == 200 for r in server.requests)


def test_readme_sql_is_copied_from_tested_files():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no SQL example"
    tested = "\n".join(p.read_text() for p in SQL_FILES)
    normalise = lambda text: " ".join(text.split())  # noqa: E731
    for block in blocks:
        assert normalise(block) in normalise(tested), f"README SQL not in sql/*.sql:\n{block}"


def test_readme_settings_example_is_valid(tmp_path):
    from aiquery._config import load_endpoints

    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    config = tmp_path / "aiquery.toml"
    config.write_text(block)
    endpoints = load_endpoints(config=config)
    assert {name: e.task for name, e in endpoints.items()} == {"chat": "chat", "embed": "embeddings", "llama": "chat"}
    assert endpoints["llama"].provider == "databricks" and endpoints["chat"].model_parameters == {"temperature": 0.0}
