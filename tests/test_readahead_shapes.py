"""Reading ahead on every SQL shape: each one is read ahead or refused as designed, sends exactly the
requests the query needs (counted at the server, equal to the batch-by-batch path's), and returns
the batch-by-batch path's rows.

The table's second row is held by the server: with read-ahead, until a request for a row of DuckDB's later
batches (row 2,048 on) arrives, which read-ahead sends while that row is out; batch by batch, for a second, in
which none of them may arrive. Nothing here is timed: the check is the order of events at the server.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

import pyarrow as pa
import pytest

import aiquery
from aiquery._planner import select_part

ROWS = 4500
SLOW = "slow [[hold]]"
FILES = tempfile.mkdtemp(prefix="aiquery-shapes-")
PARQUET = os.path.join(FILES, "t.parquet")


@dataclass(frozen=True)
class Shape:
    name: str
    sql: str
    reads_ahead: bool
    parameters: list | None = None
    why: str = ""  # a word the refusal must give


SHAPES = [
    Shape("ctas", "CREATE OR REPLACE TABLE s AS SELECT id, ai_query('chat', p) AS a FROM t", True),
    Shape("select", "SELECT id, ai_query('chat', p) FROM t", True),
    Shape("where on the answer", "SELECT count(*) FROM t WHERE ai_query('chat', p) LIKE 'echo%'", True),
    Shape("where on the answer and a column",
          "SELECT count(*) FROM t WHERE id % 3 <> 2 AND ai_query('chat', p) LIKE 'echo%'", True),
    Shape("case", "SELECT CASE WHEN length(p) > 0 THEN ai_query('chat', p) END FROM t", True),
    Shape("case with a guard that drops rows", "SELECT CASE WHEN id % 2 = 1 THEN ai_query('chat', p) END FROM t", True),
    Shape("coalesce", "SELECT coalesce(CASE WHEN id % 3 = 0 THEN 'kept' END, ai_query('chat', p)) FROM t", True),
    Shape("if", "SELECT if(id % 4 = 1, ai_query('chat', p), 'no') FROM t", True),
    Shape("and / or in the select list", "SELECT id > 5 AND ai_query('chat', p) = 'x', id < 0 OR ai_query('chat', p) <> 'y' FROM t", True),
    Shape("group by the answer", "SELECT ai_query('chat', p) AS a, count(*) FROM t GROUP BY a", True),
    Shape("distinct", "SELECT DISTINCT ai_query('chat', p) FROM t", True),
    Shape("order by the answer", "SELECT id FROM t ORDER BY ai_query('chat', p)", True),
    Shape("aggregate of answers", "SELECT category, max(ai_query('chat', p)) FROM t GROUP BY category", True),
    Shape("temp table", "CREATE OR REPLACE TABLE s AS SELECT ai_query('chat', p) FROM tt", True),
    Shape("temp table with a filter", "SELECT ai_query('chat', p) FROM tt WHERE id % 4 <> 3", True),
    Shape("temp view", "SELECT ai_query('chat', p) FROM tv", False, why="TEMP view"),
    Shape("parameters", "SELECT ai_query('chat', p) FROM t WHERE id < ?", True, parameters=[4000]),
    Shape("named parameters", "SELECT ai_query('chat', p), $tag FROM t WHERE id >= $low", True,
          parameters={"low": 1, "tag": "x"}),
    Shape("ai_gen", "SELECT ai_gen(p, endpoint => 'chat') FROM t", True),
    Shape("ai_summarize", "SELECT ai_summarize(p, endpoint => 'chat') FROM t", True),
    Shape("ai_translate", "SELECT ai_translate(p, 'French', endpoint => 'chat') FROM t", True),
    Shape("ai_fix_grammar", "SELECT ai_fix_grammar(p, endpoint => 'chat') FROM t", True),
    Shape("ai_mask", "SELECT ai_mask(p, ['name'], endpoint => 'chat') FROM t", True),
    Shape("ai_extract", "SELECT ai_extract(p, ['name', 'city'], endpoint => 'chat', failOnError => false) FROM t", True),
    Shape("ai_analyze_sentiment", "SELECT ai_analyze_sentiment(p, endpoint => 'chat', failOnError => false) FROM t", True),
    Shape("ai_classify", "SELECT ai_classify(p, ['a', 'b'], endpoint => 'chat', failOnError => false) FROM t", True),
    Shape("ai_classify multilabel",
          "SELECT ai_classify(p, ['a', 'b'], multilabel => true, endpoint => 'chat', failOnError => false) FROM t", True),
    Shape("ai_filter in where", "SELECT count(*) FROM t WHERE ai_filter(p, 'it is long', endpoint => 'chat', "
                                "failOnError => false).errorMessage IS NOT NULL", True),
    Shape("ai_embed", "SELECT ai_embed(p, endpoint => 'embed') FROM t", True),
    Shape("ai_similarity", "SELECT ai_similarity(p, p || '?', endpoint => 'embed') FROM t", True),
    Shape("two calls", "SELECT ai_query('chat', p), ai_query('chat', 'other ' || p) FROM t", True),
    Shape("union all", "SELECT ai_query('chat', p) FROM t WHERE id < 3000 UNION ALL "
                       "SELECT ai_query('chat', 'again ' || p) FROM t WHERE id >= 3000", True),
    Shape("insert with a filter", "INSERT INTO s2 SELECT ai_query('chat', p) FROM t WHERE category <> 'c3'", True),
    Shape("subquery wrapper", "SELECT a FROM (SELECT ai_query('chat', p) AS a FROM t) ORDER BY a", True),
    Shape("cte with a filter", "WITH k AS (SELECT * FROM t WHERE id % 5 <> 0) SELECT ai_query('chat', p) FROM k", True),
    Shape("view", "SELECT ai_query('chat', p) FROM v", True),
    Shape("parquet file", f"SELECT ai_query('chat', p) FROM '{PARQUET}'", True),
    Shape("join", "SELECT ai_query('chat', t.p || c.name) FROM t JOIN cats c ON t.category = c.category", True),
    Shape("registered data frame", "SELECT ai_query('chat', p) FROM df_reg", True),
    Shape("registered arrow table", "SELECT ai_query('chat', p) FROM arrow_reg", True),
    Shape("relational api", "RELATION", True),
    Shape("limit", "SELECT ai_query('chat', p) FROM t LIMIT 3000", False, why="LIMIT"),
    Shape("volatile", "SELECT ai_query('chat', p || (random() < 2)::VARCHAR) FROM t", False, why="random"),
    Shape("select list under an ai_filter", "SELECT ai_query('chat', p) FROM t WHERE ai_filter(p, 'x', "
                                            "endpoint => 'chat', failOnError => false).errorMessage IS NULL", True),
]


def prepare(con, endpoints_frame):
    con.execute(f"CREATE TABLE t AS SELECT i AS id, CASE WHEN i = 1 THEN '{SLOW}' ELSE 'row ' || i END AS p, "
                f"'c' || (i % 7) AS category FROM range({ROWS}) r(i)")
    con.execute("CREATE TEMP TABLE tt AS SELECT * FROM t")
    con.execute("CREATE TEMP VIEW tv AS SELECT * FROM t")
    con.execute(f"COPY t TO '{PARQUET}' (FORMAT parquet)")
    con.execute("CREATE VIEW v AS SELECT * FROM t WHERE id % 9 <> 4")
    con.execute("CREATE TABLE cats AS SELECT 'c' || i AS category, 'name' || i AS name FROM range(7) r(i)")
    con.execute("CREATE TABLE s2 (a VARCHAR)")
    frame = endpoints_frame
    con.register("df_reg", frame)
    con.register("arrow_reg", pa.Table.from_pandas(frame))


def run(con, shape: Shape):
    if shape.sql == "RELATION":
        return sorted(map(repr, con.table("t").select("id, ai_query('chat', p) AS a").fetchall()))
    result = con.execute(shape.sql, shape.parameters) if shape.parameters is not None else con.execute(shape.sql)
    rows = result.fetchall() if not shape.sql.upper().startswith(("CREATE", "INSERT")) else \
        con.execute("SELECT * FROM s" if "TABLE s " in shape.sql else "SELECT * FROM s2").fetchall()
    return sorted(map(repr, rows))


@pytest.fixture(scope="module")
def frame():
    pandas = pytest.importorskip("pandas")
    return pandas.DataFrame({"id": range(ROWS), "p": ["df 0", SLOW] + [f"df {i}" for i in range(2, ROWS)]})


ROW = re.compile(r"(?:row|df) (\d+)")


def sent_during_slow(server) -> int:
    """Requests for rows of DuckDB's later batches (row 2048 on) that arrived while the first slow row was out."""
    slow = [r for r in server.requests if SLOW in str(r.body)]
    if not slow:
        return 0
    first = min(slow, key=lambda r: r.arrived)
    later = [r for r in server.requests if (m := ROW.search(str(r.body))) and int(m[1]) >= 2048]
    return sum(r.arrived < first.answered for r in later)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_a_shape_reads_ahead_as_designed_and_sends_what_batch_by_batch_sends(shape, endpoints, server, frame):
    counts, results, overlap = {}, {}, {}
    server.hold_released_by = lambda record: (m := ROW.search(str(record.body))) is not None and int(m[1]) >= 2048
    for lookahead in (0, 8192):
        server.hold_max = 60.0 if lookahead else 1.0  # batch by batch, the held row would wait it out
        settings = {name: {**endpoints[name], "max_concurrency": 64, "lookahead": lookahead, "cache": False}
                    for name in ("chat", "embed")}
        con = aiquery.connect(endpoints=settings, cache=False)
        try:
            prepare(con, frame)
            if lookahead:
                explained = aiquery.explain(con, shape.sql if shape.sql != "RELATION" else
                                            con.table("t").select("id, ai_query('chat', p) AS a").sql_query(),
                                            parameters=shape.parameters)[0]
            server.reset()
            results[lookahead] = run(con, shape)
            counts[lookahead] = len(server.requests)
            overlap[lookahead] = sent_during_slow(server)
            usage = con.execute("SELECT read_ahead FROM aiquery_query_usage() ORDER BY query_id DESC LIMIT 1").fetchone()
        finally:
            con.close()
    assert results[0] == results[8192]
    assert counts[0] == counts[8192] > 0, "the read-ahead sent what the query does not need"
    assert overlap[0] == 0  # batch by batch: nothing after the slow row's batch while it is out
    assert explained.reads_ahead == shape.reads_ahead, str(explained)
    if shape.reads_ahead:
        assert usage[0] == "yes"
        assert overlap[8192] > 0, f"read ahead, yet DuckDB's later batches waited for the slow row: {explained}"
    else:
        assert usage[0].startswith("no: ") and shape.why in usage[0]
        assert shape.why in str(explained)


def test_explain_says_per_call_whether_it_is_read_ahead(con):
    con.execute("CREATE TABLE t AS SELECT i AS id, 'row ' || i AS p FROM range(10) r(i)")
    con.execute("CREATE TEMP VIEW tv AS SELECT * FROM t")
    first, second, third = aiquery.explain(con, """
        SELECT ai_query('chat', p) FROM t;
        SELECT ai_summarize(p) FROM t WHERE ai_filter(p, 'long');
        CREATE TABLE s AS SELECT ai_query('chat', p) FROM tv""")
    assert first.reads_ahead and [s.read_ahead for s in first.sites] == [True]
    assert [(s.function, s.read_ahead) for s in second.sites] == [("ai_summarize", False), ("ai_filter", True)]
    assert "model's answer in WHERE" in second.sites[0].reason
    assert not third.reads_ahead and "TEMP view" in third.refusal
    assert "read ahead: no" in str(third) and "ai_query('chat', p): batch by batch" in str(third)


@pytest.mark.slow
def test_a_temp_table_is_read_ahead_from_a_copy_that_shadows_a_table_of_its_name(con, server):
    # The TEMP table shadows the regular one, in DuckDB and in what is read ahead: only its rows are sent.
    con.execute("CREATE TABLE t AS SELECT i AS id, 'main ' || i AS p FROM range(3000) r(i)")
    con.execute("CREATE TEMP TABLE t AS SELECT i AS id, 'temp ' || i AS p FROM range(3000) r(i)")
    (plan,) = aiquery.explain(con, "SELECT ai_query('chat', p) FROM t")
    assert plan.reads_ahead, plan
    assert server.requests == []  # explaining copies no rows and sends nothing
    rows = con.execute("SELECT id, ai_query('chat', p) FROM t").fetchall()
    assert sorted(rows) == [(i, f"echo: temp {i}") for i in range(3000)]
    sent = [r.body["messages"][0]["content"] for r in server.requests]
    assert len(sent) == 3000 and all(p.startswith("temp ") for p in sent)
    assert con.sql("SELECT read_ahead FROM aiquery_query_usage() ORDER BY query_id DESC LIMIT 1").fetchall() == [("yes",)]


@pytest.mark.slow
def test_a_temp_table_changed_between_statements_is_copied_again(con, server):
    con.execute("CREATE TEMP TABLE tt AS SELECT i AS id, 'first ' || i AS p FROM range(2500) r(i)")
    con.execute("CREATE TABLE a AS SELECT ai_query('chat', p) FROM tt")
    con.execute("UPDATE tt SET p = 'second ' || id")
    server.reset()
    con.execute("CREATE TABLE b AS SELECT ai_query('chat', p) AS x FROM tt")
    assert con.sql("SELECT count(*) FROM b WHERE x LIKE 'echo: second %'").fetchall() == [(2500,)]
    sent = [r.body["messages"][0]["content"] for r in server.requests]
    assert len(sent) == 2500 and all(p.startswith("second ") for p in sent)


@pytest.mark.slow
def test_a_temp_table_too_large_to_copy_runs_batch_by_batch(con, server, monkeypatch):
    monkeypatch.setattr("aiquery._readahead.MAX_SNAPSHOT_ROWS", 1000)
    con.execute("CREATE TEMP TABLE tt AS SELECT i AS id, 'row ' || i AS p FROM range(2500) r(i)")
    assert len(con.execute("SELECT ai_query('chat', p) FROM tt").fetchall()) == 2500
    assert len(server.requests) == 2500
    ((why,),) = con.sql("SELECT read_ahead FROM aiquery_query_usage() ORDER BY query_id DESC LIMIT 1").fetchall()
    assert why.startswith("no: ") and "too large to copy" in why


def test_explain_runs_no_model_and_changes_nothing(con, server):
    con.execute("CREATE TABLE t AS SELECT 'row ' || i AS p FROM range(10) r(i)")
    aiquery.explain(con, "CREATE TABLE s AS SELECT ai_query('chat', p) FROM t")
    assert server.requests == []
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 's'").fetchone() == (0,)


def test_the_cli_explains(endpoints, server, tmp_path, capsys):
    from aiquery._cli import main

    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{server.openai_base}"\nmodel = "m"\n')
    db = str(tmp_path / "data.duckdb")
    assert main(["run", "--db", db, "--config", str(config), "-e", "CREATE TABLE t AS SELECT 'x' AS p"]) == 0
    capsys.readouterr()
    assert main(["explain", "--db", db, "--config", str(config), "-e",
                 "SELECT CASE WHEN p <> '' THEN ai_query('chat', p) END FROM t LIMIT 1"]) == 0
    out = capsys.readouterr().out
    assert "read ahead: no (it has a LIMIT" in out and "ai_query('chat', p): batch by batch" in out
    assert server.requests == []


def test_select_part_of_insert_and_ctas():
    assert select_part("CREATE OR REPLACE TEMP TABLE x AS SELECT 1") == "SELECT 1"
    assert select_part("INSERT INTO s (a, b) SELECT 1, 2;") == "SELECT 1, 2"
    assert select_part("insert or replace into main.s with c as (select 1) select * from c") == \
        "with c as (select 1) select * from c"
