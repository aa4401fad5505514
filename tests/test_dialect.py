"""The Databricks dialect: Databricks SQL run on aiquery, the request bodies it sends, and the hints
DuckDB's errors get when Databricks SQL is run without it."""

from __future__ import annotations

import duckdb
import pytest

import aiquery
from aiquery._cli import main as cli
from conftest import CANARY_KEY
from databricks_examples import DEFAULTS, EXAMPLES, LLAMA, endpoints, setup


@pytest.fixture
def databricks(server, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", CANARY_KEY)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    images = tmp_path / "images"
    images.mkdir()
    with aiquery.connect(endpoints=endpoints(server), **DEFAULTS) as con:
        setup(con, images)
        yield con, images


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_databricks_sql_runs_through_the_dialect(databricks, server, example):
    con, images = databricks
    relation = aiquery.sql(con, example.sql.replace("{images}", str(images)), dialect="databricks")
    rows = relation.fetchall()
    if example.rows is not None:
        assert rows == example.rows
    else:  # failOnError => false: the failed row carries the error, the other its answer
        assert rows[0] == (1, "echo: A warm and funny film.", None)
        assert rows[1][1] is None and f"endpoint {LLAMA!r}" in rows[1][2] and "HTTP 400" in rows[1][2]
    if example.check is not None:
        example.check(server.bodies())
    if example.requests is not None:
        assert len(server.requests) == example.requests
    assert all(r.path.startswith("/serving-endpoints/") for r in server.requests)


def test_what_the_rules_write(databricks):
    con, _ = databricks
    sql = """CREATE OR REPLACE MATERIALIZED VIEW main.default.t AS
             SELECT from_json(j, 'a INT, b ARRAY<STRING>') AS parsed, j:a::string AS a
             FROM read_files('/data/', format => 'binaryFile', recursiveFileLookup => 'true', pathGlobFilter => '*.png');
             USE CATALOG main; DROP MATERIALIZED VIEW main.default.t"""
    assert aiquery.translate(sql) == (
        "CREATE OR REPLACE TABLE main.t AS SELECT JSON_TRANSFORM(CAST(j AS JSON), "
        """'{"a": "INTEGER", "b": ["VARCHAR"]}') AS parsed, CAST(j ->> '$.a' AS TEXT) AS a FROM (SELECT filename AS """
        "path, last_modified AS modificationTime, size AS length, content FROM READ_BLOB('/data/**/*.png')) "
        "AS read_files;\nDROP TABLE main.t;")
    # A catalog that names an attached DuckDB database is kept.
    con.execute("ATTACH ':memory:' AS sales")
    assert aiquery.sql(con, "CREATE TABLE sales.default.orders AS SELECT 1 AS n; SELECT n FROM sales.main.orders",
                       dialect="databricks").fetchall() == [(1,)]


def test_read_files_of_csv_json_and_parquet(databricks, tmp_path):
    con, _ = databricks
    (tmp_path / "scores.csv").write_text("id;score\n1;0.5\n2;0.75\n")
    (tmp_path / "notes.json").write_text('{"id": 1, "note": "fine"}\n{"id": 2, "note": "dull"}\n')
    con.execute(f"COPY (SELECT 1 AS id) TO '{tmp_path}/one.parquet' (FORMAT parquet)")
    rows = aiquery.sql(con, f"""SELECT (SELECT sum(score) FROM read_files('{tmp_path}/scores.csv', header => true,
                                                                          sep => ';')),
                                       (SELECT count(*) FROM read_files('{tmp_path}/scores.csv', sep => ';')),
                                       (SELECT string_agg(note, ',' ORDER BY id) FROM read_files('{tmp_path}/notes.json')),
                                       (SELECT id FROM read_files('{tmp_path}/', format => 'parquet',
                                                                  pathGlobFilter => '*.parquet'))""",
                       dialect="databricks").fetchall()
    assert rows == [(1.25, 3, "fine,dull", 1)]  # without header => true the header line is a row


@pytest.mark.parametrize("sql, error", [
    ("REFRESH MATERIALIZED VIEW moods", "Run their CREATE again: answers already received come from the response cache"),
    ("CREATE TABLE t LOCATION '/mnt/x' AS SELECT 1", "LOCATION .*COPY it TO the location"),
    ("CREATE STREAMING TABLE s AS SELECT 1", "CREATE STREAMING TABLE has no DuckDB equivalent"),
    ("SELECT * FROM read_files('/x/', format => 'text')", "format 'text' has no DuckDB translation"),
    ("SELECT * FROM read_files('/x/')", "give format => 'binaryFile'"),
    ("SELECT * FROM read_files('/x/a.csv', inferColumnTypes => true)", "option 'infercolumntypes' has no DuckDB"),
    ("SELECT FROM WHERE (", "cannot read this as Databricks SQL"),
])
def test_what_the_dialect_cannot_translate_is_refused_with_the_reason(sql, error):
    with pytest.raises(aiquery.ArgumentError, match=error):
        aiquery.translate(sql)


def test_dialect_names():
    assert aiquery.translate("SELECT 1", dialect="duckdb") == "SELECT 1"
    assert aiquery.translate('SELECT "x"', dialect="spark") == "SELECT 'x';"
    with pytest.raises(aiquery.ArgumentError, match="dialect must be one of databricks, duckdb, got 'mysql'"):
        aiquery.translate("SELECT 1", dialect="mysql")


# --- hints when Databricks SQL runs as DuckDB SQL

HINTED = [
    ('SELECT id, ai_query("sentiment-analysis", text) FROM reviews',
     r"""(?s)Referenced column "sentiment-analysis" not found.*\nhint: Databricks reads "sentiment-analysis" as a string; """
     r"""write 'sentiment-analysis', or run it with dialect="databricks" \(aiquery run --dialect databricks\)"""),
    ("""SELECT ai_gen("it's")""", r"""hint: Databricks reads "it's" as a string; write 'it''s', or run it"""),
    ("""SELECT ai_classify(text, ["good", "bad"]) FROM reviews""", r"""hint: Databricks reads "good" as a string"""),
    ('SELECT id FROM reviews WHERE text = "fine"', r"""hint: Databricks reads "fine" as a string"""),
    ("SELECT ai_classify(text, array('a', 'b')) FROM reviews",
     r"(?s)Parser Error.*\nhint: array\(...\) is Databricks SQL; DuckDB writes a list as \['a', 'b'\], or run it with "
     r'dialect="databricks"'),
    ("SELECT ai_query('m', text, modelParameters => named_struct('max_tokens', 100)) FROM reviews",
     r"""(?s)named_struct does not exist!.*\nhint: named_struct\('k', v, ...\) is Databricks SQL; DuckDB writes a struct as """
     r"""\{'k': v, ...\}, or run it with dialect="databricks\""""),
    ("SELECT * FROM read_files('/x/', format => 'binaryFile')", r"hint: read_files is Databricks SQL; DuckDB reads files "
     r"of images with read_blob"),
    ("CREATE MATERIALIZED VIEW v AS SELECT 1", r"hint: CREATE MATERIALIZED VIEW is Databricks SQL; in DuckDB write "
     r"CREATE TABLE ... AS"),
    ("SELECT CAST(NULL AS ARRAY<STRING>)", r"hint: ARRAY<...>, STRUCT<...> and MAP<...> types are Databricks SQL"),
    ("SELECT ai_query('m', 'x', modelParameters => map('max_tokens', 5))", r"hint: map\(k, v, ...\) is Databricks SQL"),
    ("SELECT * FROM main.default.reviews", r"hint: catalog.schema.table is a Unity Catalog name"),
    ("SELECT collect_list(text) FROM reviews", r'hint: collect_list is a Databricks function that DuckDB lacks: run it '
     r'with dialect="databricks"'),
]


@pytest.mark.slow
@pytest.mark.parametrize("sql, message", HINTED, ids=[h[0][:40] for h in HINTED])
def test_databricks_sql_without_the_dialect_fails_with_a_hint(databricks, server, sql, message):
    con, _ = databricks
    with pytest.raises(duckdb.Error, match=message) as info:
        aiquery.sql(con, sql)
    assert isinstance(info.value, (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException))
    assert aiquery.hint(info.value, sql) is not None
    assert server.requests == []


def test_duckdb_errors_of_duckdb_sql_get_no_hint(databricks):
    con, _ = databricks
    for sql in ('SELECT "nope" FROM reviews', "SELECT * FROM nowhere", "SELECT FROM WHERE", "SELECT lenn('x')",
                "SELECT ARRAY(SELECT 1) + 'x'"):
        with pytest.raises(duckdb.Error) as info:
            con.sql(sql)
        assert "hint:" not in str(info.value) and aiquery.hint(info.value, sql) is None, sql


def test_the_cli_runs_the_dialect_and_hints_without_it(databricks, server, tmp_path, capsys, monkeypatch):
    con, _ = databricks
    db = tmp_path / "jobs.duckdb"
    job = tmp_path / "job.sql"
    job.write_text('CREATE TABLE reviews AS SELECT 1 AS id, "A fine film" AS text;\n'
                   'SELECT id, ai_query("sentiment-analysis", text, "returnType", "STRING") AS s FROM reviews;')
    config = tmp_path / "aiquery.toml"
    config.write_text('[endpoints.sentiment-analysis]\nprovider = "databricks"\ntask = "custom"\n'
                      'model = "sentiment-analysis"\n')
    assert cli(["run", "--dialect", "databricks", "--db", str(db), "--config", str(config), str(job)]) == 0
    assert "A fine film" in capsys.readouterr().out
    assert server.bodies() == [{"inputs": ["A fine film"]}]
    assert cli(["run", "--db", str(tmp_path / "other.duckdb"), "--config", str(config), str(job)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aiquery: ") and 'hint: Databricks reads "A fine film" as a string' in err


def test_estimate_translates_and_hints_too(databricks, server, tmp_path, capsys):
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.{LLAMA}]\nprovider = "databricks"\nmodel = "{LLAMA}"\n')
    sql = f'SELECT ai_query("{LLAMA}", "Say " || i) FROM range(3) t(i)'
    assert cli(["estimate", "--dialect", "databricks", "--config", str(config), "-e", sql]) == 0
    assert LLAMA in capsys.readouterr().out
    assert cli(["estimate", "--config", str(config), "-e", sql]) == 1
    assert f'hint: Databricks reads "{LLAMA}" as a string' in capsys.readouterr().err
    assert server.requests == []
