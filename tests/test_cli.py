"""The `aiquery` command: run SQL, write results, list endpoints."""

import subprocess
import sys

import duckdb
import pytest

from aiquery._cli import main


@pytest.fixture
def config(tmp_path, server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-canary-7f3a9c1e5b")
    path = tmp_path / "aiquery.toml"
    path.write_text(f"""
[endpoints.chat]
base_url = "{server.openai_base}"
model = "fake-chat"
api_key_env = "FAKE_KEY"

[endpoints.embed]
task = "embeddings"
base_url = "{server.openai_base}"
model = "fake-embed"
api_key_env = "FAKE_KEY"
""")
    return path


def test_run_prints_the_last_result_as_a_table_and_sends_each_row_once(config, server, capsys):
    assert main(["run", "--config", str(config), "-e",
                 "CREATE TABLE t AS SELECT 'p' || i AS p FROM range(3) r(i); SELECT p, ai_query('chat', p) AS a FROM t ORDER BY p"]) == 0
    out = capsys.readouterr().out
    assert "echo: p0" in out and "echo: p2" in out and "varchar" in out
    assert len(server.requests) == 3  # printing did not run the query again


def test_run_a_file_into_a_database_and_write_parquet_csv_json(config, server, tmp_path, capsys):
    db, sql = tmp_path / "data.duckdb", tmp_path / "job.sql"
    sql.write_text("CREATE TABLE scored AS SELECT i, ai_query('chat', 'row ' || i) AS a FROM range(4) t(i);\n"
                   "SELECT i, a FROM scored ORDER BY i;")
    for suffix in ("parquet", "csv", "json"):
        out = tmp_path / f"out.{suffix}"
        assert main(["run", str(sql), "--db", str(db), "--config", str(config), "--output", str(out)]) == 0
        assert f"wrote 4 rows to {out}" in capsys.readouterr().out
        with duckdb.connect() as con:
            rows = con.execute("SELECT * FROM read_" + {"parquet": "parquet", "csv": "csv", "json": "json"}[suffix]
                               + "(?) ORDER BY i", [str(out)]).fetchall()
        assert rows[0] == (0, "echo: row 0") and len(rows) == 4
        with duckdb.connect(str(db)) as con:
            con.execute("DROP TABLE scored")  # the next round creates it again


def test_endpoints_lists_task_provider_and_where_settings_came_from(config, capsys):
    assert main(["endpoints", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "task", "provider", "model", "url", "settings", "from"]
    assert lines[1].split()[:4] == ["chat", "chat", "openai", "fake-chat"] and str(config) in lines[1]
    assert lines[2].split()[:2] == ["embed", "embeddings"]
    assert "sk-canary" not in "\n".join(lines)


def test_errors_are_one_clear_line_and_exit_1(config, capsys):
    assert main(["run", "--config", str(config), "-e", "SELECT ai_query('chatt', 'x')"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aiquery: ") and "unknown endpoint 'chatt'" in err and "Did you mean 'chat'?" in err


@pytest.mark.slow
def test_the_installed_command_runs(config, server):
    result = subprocess.run([sys.executable, "-m", "aiquery._cli", "run", "--config", str(config), "-e",
                             "SELECT ai_query('chat', 'from a shell') AS a"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "echo: from a shell" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args", [["run", "-"], [], ["run", "--dialect", "databricks", "-"]],
                         ids=["run -", "no command", "run --dialect databricks -"])
def test_sql_from_standard_input(config, server, args):
    sql = """SELECT ai_query('chat', 'from stdin ' || i) AS a FROM range(2) t(i) ORDER BY a;"""
    if "databricks" in args:
        sql = sql.replace("'chat'", '"chat"').replace("range(2) t(i)", "(SELECT explode(array(0, 1)) AS i)")
    result = subprocess.run([sys.executable, "-m", "aiquery._cli", *args, "--config", str(config)], input=sql,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "echo: from stdin 0" in result.stdout and "echo: from stdin 1" in result.stdout
    assert len(server.requests) == 2
