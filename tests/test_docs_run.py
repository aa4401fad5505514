"""Docs that run: every SQL file under sql/ executes, and the README's SQL is copied from them."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import aiquery
from aiquery._script import statements

ROOT = Path(__file__).resolve().parent.parent
SQL_FILES = sorted((ROOT / "sql").glob("*.sql"))


def run_sql_file(path: Path, endpoints: dict) -> list[list[tuple]]:
    """Runs every statement (a file that starts with `-- dialect: databricks` through that dialect,
    task functions defaulting to the "chat" and "embed" endpoints); returns the rows of each SELECT."""
    text = path.read_text()
    dialect = "databricks" if text.startswith("-- dialect: databricks") else None
    defaults = {"default_chat_endpoint": "chat", "default_embedding_endpoint": "embed"} if dialect else {}
    with aiquery.connect(endpoints=endpoints, **defaults) as con:
        results = [(s.type, con.execute(s).fetchall()) for s in statements(con, text, dialect)]
    return [rows for kind, rows in results if kind == duckdb.StatementType.SELECT]


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SQL_FILES if p.name != "quickstart.sql"], ids=lambda p: p.name)
def test_sql_file_runs(path, endpoints, server):
    results = run_sql_file(path, {"chat": endpoints["chat"], "embed": endpoints["embed"]})
    assert any(results), f"{path.name} returned no rows at all"
    assert server.requests, f"{path.name} sent no request"
    assert all(r.status == 200 for r in server.requests)


@pytest.mark.local_models
@pytest.mark.slow  # the built-in models
def test_quickstart_runs_on_the_builtin_models():
    pytest.importorskip("llama_cpp", reason="the built-in models need: pip install -e '.[local]'")
    results = run_sql_file(ROOT / "sql" / "quickstart.sql", {})
    (reviews, accuracy, said_positive), = results[0]
    assert reviews == 100 and 0 <= said_positive <= 100
    assert accuracy > 0.6  # better than chance; measured 0.78 (SmolLM2-135M is tiny)
    neighbours = results[1]
    assert len(neighbours) == 8 and all(label in ("fresh", "rotten") for label, *_ in neighbours)
    assert all(0.3 < similarity <= 1.0 for *_, similarity in neighbours)
    (knn_accuracy,), = results[2]
    assert 0 <= knn_accuracy <= 1


def test_readme_sql_is_copied_from_tested_files():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no SQL example"
    tested = "\n".join(p.read_text() for p in SQL_FILES)
    normalise = lambda text: " ".join(text.split())  # noqa: E731
    for block in blocks:
        assert normalise(block) in normalise(tested), f"README SQL not in sql/*.sql:\n{block}"


def test_readme_settings_example_is_valid(tmp_path):
    from aiquery._config import read_settings
    from aiquery._usage import Price

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    block, prices = blocks[0], next(b for b in blocks if "[prices." in b)
    batch = next(b for b in blocks if "batch = true" in b)
    config = tmp_path / "aiquery.toml"
    config.write_text(block + "\n" + batch + "\n" + prices)
    settings = read_settings(config)
    assert settings.prices == {"gpt-4o-mini": Price(0.15, 0.60, cached_input=0.075, batch=0.5)}
    endpoints = settings.endpoints
    assert {name: e.task for name, e in endpoints.items() if e.source == str(config)} == {
        "chat": "chat", "embed": "embeddings", "llama": "chat", "cheap": "chat", "azure": "chat"}
    assert endpoints["cheap"].batch is True and endpoints["cheap"].batch_poll_interval == 30
    assert endpoints["llama"].provider == "databricks" and endpoints["chat"].model_parameters == {"temperature": 0.0}
    assert endpoints["azure"].api_key_header == "api-key"


def test_readme_databricks_examples_resolve_to_their_auth_types(tmp_path, monkeypatch):
    from aiquery import _auth
    from aiquery._config import read_settings
    from aiquery._providers import resolve

    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Databricks in production")
    section = readme[start:readme.index("\n## ", start + 1)]
    (profile,) = re.findall(r"```ini\n(.*?)```", section, flags=re.S)
    config = tmp_path / "aiquery.toml"
    config.write_text("\n".join(re.findall(r"```toml\n(.*?)```", section, flags=re.S)))
    (tmp_path / "databrickscfg").write_text(profile)
    for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "databrickscfg"))
    for name in ("DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "TEAM_A_CLIENT_ID", "TEAM_A_CLIENT_SECRET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DATABRICKS_HOST", "https://adb-1.azuredatabricks.net")
    endpoints = read_settings(config).endpoints
    kinds = {name: type(resolve(e).auth).__name__ for name, e in endpoints.items() if e.provider == "databricks"
             and name not in ("llama-dev", "llama-azure", "llama-sdk")}
    assert kinds == {"llama": "ClientCredentials", "llama-prod": "ClientCredentials", "team-a": "ClientCredentials",
                     "challenger": "ClientCredentials"}
    served = resolve(endpoints["challenger"]).url
    assert served == "https://adb-1.azuredatabricks.net/serving-endpoints/house-llm/served-models/llama-v3/invocations"
    monkeypatch.setenv("DATABRICKS_TOKEN", "x")
    assert resolve(endpoints["llama-dev"]).auth is None  # pat: a fixed header
    if _auth.sdk_installed():
        assert {resolve(endpoints[name]).auth.auth_type for name in ("llama-azure", "llama-sdk")} == {"databricks-sdk"}


def test_ci_runs_the_readme_set_up_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up"):readme.index("\n## ", readme.index("## Set up") + 1)]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert len(commands) == 2, "the README's set-up is two commands: install + demo, then tests"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line in commands] == commands


@pytest.mark.local_models
@pytest.mark.skipif(shutil.which("java") is None, reason="PySpark needs Java 17 (apt-get install openjdk-17-jre-headless)")
@pytest.mark.slow  # Spark and the built-in models
def test_the_readme_spark_example_runs_as_it_is(tmp_path):
    pytest.importorskip("llama_cpp", reason="the built-in models need: pip install -e '.[local]'")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Scaling out with Spark"):]
    example = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    (tmp_path / "example.py").write_text(example)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line.split("|") for line in done.stdout.splitlines() if line.startswith("|")]
    assert [cells[1].strip() for cells in table] == ["id", "1", "2"]
    assert all(cells[4].strip() == "384" and cells[3].strip() == "NULL" for cells in table[1:]), done.stdout
