"""Benchmark 8, the shape matrix: read-ahead efficiency on the SQL shapes people write.

Each shape runs in a fresh process against benchmark 1's server (lognormal latency by row, median
0.3 s, sigma 1), `max_concurrency` 256, cache off. Its efficiency is the in-order ideal of the rows
it sends (their latencies, in row order, over 256 perfect slots: workloads.ideal_makespan) over its
measured time. Its request count must equal the rows it needs, counted by a query of its own that
calls no model, with one request per distinct row.

    python benchmarks/run.py --only shapes [--quick]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import workloads
from clients import isolated
from report import Line, Section
from workloads import MODEL

TARGET = 0.90
ROWS, QUICK_ROWS = 6_000, 1_500


@dataclass(frozen=True)
class Shape:
    name: str
    sql: str             # over `reviews(id, prompt, category)`; `?` is the parameter ROWS // 2
    needed: str          # SQL (no model) counting the requests the shape needs
    setup: str = ""      # run before it, untimed
    refused: str = ""    # read-ahead is refused: why (the planner's reason, shortened)


ALL = "SELECT count(*) FROM reviews"
SHAPES = [
    Shape("CTAS (benchmark 1's shape)", "CREATE TABLE s AS SELECT prompt, ai_query('e', prompt) FROM reviews", ALL),
    Shape("WHERE ai_query(...) LIKE", "SELECT count(*) FROM reviews WHERE ai_query('e', prompt) LIKE 'echo%'", ALL),
    Shape("CASE WHEN", "SELECT CASE WHEN length(prompt) > 0 THEN ai_query('e', prompt) END FROM reviews", ALL),
    Shape("GROUP BY the answer", "SELECT ai_query('e', prompt) AS a, count(*) FROM reviews GROUP BY a", ALL),
    Shape("CTAS over a TEMP table", "CREATE TABLE s AS SELECT prompt, ai_query('e', prompt) FROM tmp", ALL,
          setup="CREATE TEMP TABLE tmp AS SELECT * FROM reviews"),
    Shape("parameters (con.execute(sql, [n]))", "SELECT ai_query('e', prompt) FROM reviews WHERE id < ?",
          f"SELECT count(*) FROM reviews WHERE id < {{half}}"),
    Shape("ai_gen", "SELECT ai_gen(prompt, endpoint => 'e') FROM reviews", ALL),
    Shape("ai_summarize", "SELECT ai_summarize(prompt, endpoint => 'e') FROM reviews", ALL),
    Shape("con.register(df) then SELECT", "SELECT ai_query('e', prompt) FROM df_reg", ALL, setup="REGISTER"),
    Shape("ai_filter in WHERE", "SELECT count(*) FROM reviews WHERE ai_filter(prompt, 'is long', endpoint => 'e', "
          "failOnError => false).errorMessage IS NOT NULL", ALL),
    Shape("ai_classify", "SELECT ai_classify(prompt, ['a', 'b'], endpoint => 'e', failOnError => false) FROM reviews", ALL),
    Shape("ai_classify multilabel", "SELECT ai_classify(prompt, ['a', 'b'], multilabel => true, endpoint => 'e', "
          "failOnError => false) FROM reviews", ALL),
    Shape("ai_analyze_sentiment", "SELECT ai_analyze_sentiment(prompt, endpoint => 'e', failOnError => false) "
          "FROM reviews", ALL),
    Shape("ai_extract", "SELECT ai_extract(prompt, ['name'], endpoint => 'e', failOnError => false) FROM reviews", ALL),
    Shape("ai_translate", "SELECT ai_translate(prompt, 'French', endpoint => 'e') FROM reviews", ALL),
    Shape("CASE that drops half the rows", "SELECT CASE WHEN id % 2 = 0 THEN ai_query('e', prompt) END FROM reviews",
          "SELECT count(*) FROM reviews WHERE id % 2 = 0"),
    Shape("COALESCE", "SELECT coalesce(CASE WHEN id % 3 = 0 THEN 'kept' END, ai_query('e', prompt)) FROM reviews",
          "SELECT count(*) FROM reviews WHERE id % 3 <> 0"),
    Shape("IF", "SELECT if(id % 4 = 1, 'no', ai_query('e', prompt)) FROM reviews",
          "SELECT count(*) FROM reviews WHERE id % 4 <> 1"),
    # DuckDB evaluates the comparison first here (it orders a filter's conditions by its own rules).
    Shape("WHERE a column AND the answer", "SELECT count(*) FROM reviews WHERE category <> 'c3' AND "
          "ai_query('e', prompt) LIKE 'echo%'", "SELECT count(*) FROM reviews WHERE category <> 'c3'"),
    Shape("DISTINCT", "SELECT DISTINCT ai_query('e', prompt) FROM reviews", ALL),
    Shape("ORDER BY the answer", "SELECT id FROM reviews ORDER BY ai_query('e', prompt)", ALL),
    Shape("aggregate per group", "SELECT category, max(ai_query('e', prompt)) FROM reviews GROUP BY category", ALL),
    Shape("INSERT ... SELECT with a filter", "INSERT INTO s2 SELECT ai_query('e', prompt) FROM reviews WHERE category <> 'c3'",
          "SELECT count(*) FROM reviews WHERE category <> 'c3'", setup="CREATE TABLE s2 (a VARCHAR)"),
    Shape("UNION ALL", "SELECT ai_query('e', prompt) FROM reviews WHERE id % 2 = 0 UNION ALL "
          "SELECT ai_query('e', prompt) FROM reviews WHERE id % 2 = 1", ALL),
    Shape("a view", "SELECT ai_query('e', prompt) FROM v", "SELECT count(*) FROM v",
          setup="CREATE VIEW v AS SELECT * FROM reviews WHERE category <> 'c5'"),
    Shape("a CTE with a filter", "WITH k AS (SELECT * FROM reviews WHERE id % 5 <> 0) SELECT ai_query('e', prompt) FROM k",
          "SELECT count(*) FROM reviews WHERE id % 5 <> 0"),
    Shape("a JOIN", "SELECT ai_query('e', r.prompt) FROM reviews r JOIN cats c USING (category)", ALL,
          setup="CREATE TABLE cats AS SELECT DISTINCT category FROM reviews"),
    Shape("relational API: con.table(...).select(...)", "RELATION", ALL),
    Shape("registered Arrow table", "SELECT ai_query('e', prompt) FROM arrow_reg", ALL, setup="REGISTER"),
]


def run_shape(base_url: str, *, rows: int, shape: str) -> dict:
    """Times one shape on a fresh connection: {"seconds", "requests_needed", "read_ahead"}."""
    import aiquery

    spec = next(s for s in SHAPES if s.name == shape)
    con = aiquery.connect(endpoints={"e": {"base_url": base_url, "model": MODEL, "max_concurrency": 256}},
                          cache=False, progress=False)
    con.execute(f"CREATE TABLE reviews AS SELECT range AS id, 'row ' || range AS prompt, 'c' || (range % 7) AS category "
                f"FROM range({int(rows)})")
    if spec.setup == "REGISTER":
        import pyarrow as pa

        frame = con.execute("SELECT * FROM reviews").df()
        con.register("df_reg", frame)
        con.register("arrow_reg", pa.Table.from_pandas(frame))
    elif spec.setup:
        con.execute(spec.setup)
    half = rows // 2
    needed = con.execute(spec.needed.format(half=half)).fetchall()[0][0]
    start = time.perf_counter()
    if spec.sql == "RELATION":
        con.table("reviews").select("id, ai_query('e', prompt) AS a").fetchall()
    elif "?" in spec.sql:
        con.execute(spec.sql, [half]).fetchall()
    else:
        con.execute(spec.sql).fetchall()
    seconds = time.perf_counter() - start
    read_ahead = con.execute("SELECT read_ahead FROM aiquery_query_usage() ORDER BY query_id DESC LIMIT 1").fetchone()[0]
    con.close()
    return {"seconds": seconds, "requests_needed": needed, "read_ahead": read_ahead}


def bench_shapes(rows: int, server, slots: int) -> Section:
    """8. The shape matrix (see the module's docstring)."""
    section = Section(f"8. Read-ahead on {len(SHAPES)} SQL shapes: {rows:,} rows, C = {slots}, lognormal latency")
    for shape in SHAPES:
        server.reset()
        result = isolated(run_shape, {"base_url": server.openai_base, "rows": rows, "shape": shape.name}, timeout=600)
        stats = server.stats()
        if "error" in result:
            section.lines.append(Line(shape.name, f"FAILED: {result['error']}", "-", None, "-", False))
            continue
        sent = [stats["planned"][i] for i in sorted(stats["planned"])]
        ideal = workloads.ideal_makespan(sent, slots)
        ratio = ideal / result["seconds"]
        exact = stats["requests"] == result["requests_needed"]
        target = f">= {TARGET:.2f}" if not shape.refused else "proved impossible"
        met = (ratio >= TARGET and exact) if not shape.refused else exact and result["read_ahead"].startswith("no")
        section.lines.append(Line(shape.name, f"{result['seconds']:.1f} s, {stats['requests']:,} requests",
                                  f"ideal {ideal:.1f} s, {result['requests_needed']:,} needed", ratio, target, met))
        section.notes.append(f"{shape.name}: read ahead: {result['read_ahead']}")
    return section
