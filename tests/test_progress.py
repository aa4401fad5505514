"""The progress line a user plans by: rows done of a total, percentage, time left, cost so far.

Driven as a user meets it: `aiquery run` in a real pseudo-terminal (pexpect) against the fake
server with latency; and the figures behind it, read from aiquery_query_usage() while a query runs.
Nothing is timed: the checks are what the line says, in order.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest

import aiquery
from fakeserver import FakeServer

pexpect = pytest.importorskip("pexpect")
AIQUERY = str(Path(sys.executable).with_name("aiquery"))
LINE = re.compile(r"ai_query: +(?:(\d+)%\|[^|]*\| (\d+)/(~?)(\d+)|(\d+) rows, total unknown) \[(\d\d:\d\d)(.*?)\]")
LEFT = re.compile(r"left (\d\d):(\d\d)")


def lines_of(sql: str, config: Path, cwd: Path) -> list[re.Match]:
    child = pexpect.spawn(AIQUERY, ["run", "--config", str(config), "-e", sql], cwd=str(cwd), encoding="utf-8",
                          dimensions=(40, 220), timeout=300)
    out = []
    while True:
        try:
            out.append(child.read_nonblocking(65536, timeout=120))
        except pexpect.EOF:
            break
    child.wait()  # its output has ended; close() alone would signal a process still exiting (a busy machine)
    child.close()
    assert child.exitstatus == 0, "".join(out)[-2000:]
    return [m for m in map(LINE.search, "".join(out).replace("\r", "\n").split("\n")) if m]


@pytest.fixture
def slow_server():
    with FakeServer(latency=0.1) as server:
        yield server


@pytest.fixture
def config(slow_server, tmp_path):
    path = tmp_path / "aiquery.toml"
    path.write_text(f'[endpoints.chat]\nbase_url = "{slow_server.openai_base}"\nmodel = "gpt-4o-mini"\n'
                    'max_concurrency = 32\ncache = false\n')
    return path


ROWS = 2000
TABLE = f"CREATE TABLE t AS SELECT 'row ' || i AS p FROM range({ROWS}) r(i); "


@pytest.mark.slow
def test_the_line_shows_a_total_a_percentage_that_reaches_100_and_a_time_left_that_shrinks(config, slow_server, tmp_path):
    lines = lines_of(TABLE + "CREATE TABLE s AS SELECT p, ai_query('chat', p) AS a FROM t", config, tmp_path)
    assert len(lines) >= 3, lines
    totals = {int(m[4]) for m in lines}
    assert totals == {ROWS} == {len(slow_server.requests)}  # exact: read ahead to the end
    assert all(m[3] == "" for m in lines)  # not marked as an estimate
    percents = [int(m[1]) for m in lines]
    assert percents == sorted(percents) and percents[-1] == 100
    lefts = [int(a) * 60 + int(b) for m in lines for a, b in LEFT.findall(m[7])]
    assert len(lefts) >= 2 and lefts[-1] < lefts[0]
    assert "$" in lines[-1][7]  # cost so far: gpt-4o-mini has a price


@pytest.mark.slow
@pytest.mark.parametrize("source", ["table", "temp table"])
def test_a_query_that_is_not_read_ahead_shows_an_estimate_or_says_it_has_none(config, slow_server, tmp_path, source):
    """random() keeps the read-ahead off. DuckDB's progress (how far its scan is), or else the table's
    row count, gives an estimate, marked ~; a TEMP table's count is out of reach (another cursor cannot
    see it) and DuckDB does not always measure its scan: then the line says the total is unknown."""
    rows = 5000
    table = "tt" if source == "temp table" else "t"
    lines = lines_of(f"CREATE TABLE t AS SELECT 'row ' || i AS p FROM range({rows}) r(i); "
                     "CREATE TEMP TABLE tt AS SELECT * FROM t; "
                     f"SELECT count(ai_query('chat', p || (random() < 2)::VARCHAR)) FROM {table}", config, tmp_path)
    running = [m for m in lines if int(m[2] or m[5]) < rows]
    assert running
    for m in running:
        assert (m[5] is not None and source == "temp table") or (m[3] == "~" and abs(int(m[4]) - rows) <= rows * 0.05), m[0]
    assert int(lines[-1][1]) == 100 and int(lines[-1][4]) == rows  # the end: exact


@pytest.mark.slow
def test_a_total_that_cannot_be_known_is_said_to_be_unknown(slow_server, tmp_path):
    """Rows of unnest() (DuckDB does not measure how far it is) and no read-ahead (lookahead 0): no bar."""
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{slow_server.openai_base}"\nmodel = "m"\n'
                      'max_concurrency = 32\ncache = false\nlookahead = 0\n')
    lines = lines_of(f"SELECT count(ai_query('chat', 'u' || x)) FROM unnest(range({ROWS})) t(x)", config, tmp_path)
    running = [m for m in lines if int(m[2] or m[5]) < ROWS]
    assert running and all(m[5] is not None for m in running), lines  # "N rows, total unknown", no percentage
    assert int(lines[-1][1]) == 100 and int(lines[-1][4]) == ROWS  # once it has ended: what it did


@pytest.mark.slow
def test_the_figures_are_in_aiquery_query_usage_while_it_runs(endpoints, server):
    slow = {"chat": {**endpoints["chat"], "max_concurrency": 8}}
    con = aiquery.connect(endpoints=slow, progress=False, engine=aiquery.Engine())  # its queries only
    con.execute("CREATE TABLE t AS SELECT CASE WHEN i % 100 = 0 THEN 'slow [[sleep=0.3]]' ELSE 'row ' || i END AS p "
                "FROM range(1500) r(i)")
    watcher = con.cursor()
    seen: list[tuple] = []
    running = threading.Event()

    def watch() -> None:
        while not running.is_set():
            seen.extend(watcher.execute(
                "SELECT rows_done, rows_total, rows_total_estimated, percent, seconds_left, requests, finished "
                "FROM aiquery_query_usage() WHERE statement LIKE 'CREATE TABLE s%'").fetchall())
            time.sleep(0.05)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        con.execute("CREATE TABLE s AS SELECT ai_query('chat', p) FROM t")
    finally:
        running.set()
        thread.join()
    during = [row for row in seen if row[6] is None]
    assert during, "the query was never seen running"
    totals = [(row[1], row[2]) for row in during if row[1] is not None]
    assert totals and all(total == 1500 if not estimated else abs(total - 1500) <= 75 for total, estimated in totals)
    assert any(0 < row[0] < 1500 and row[4] is not None for row in during)
    final = con.execute("SELECT rows_done, rows_total, percent, seconds_left FROM aiquery_query_usage() "
                        "WHERE statement LIKE 'CREATE TABLE s%'").fetchone()
    assert final == (1500, 1500, 100.0, None)


def test_cache_hits_and_repeats_are_counted_apart(endpoints, server):
    con = aiquery.connect(endpoints=endpoints, progress=False, engine=aiquery.Engine())  # its queries only
    con.execute("CREATE TABLE t AS SELECT 'row ' || (i % 50) AS p FROM range(500) r(i)")
    con.execute("SELECT ai_query('chat', p) FROM t WHERE p < 'row 3'").fetchall()  # warms the cache for some
    con.execute("CREATE TABLE s AS SELECT ai_query('chat', p) FROM t")
    rows_done, cache_hits, deduplicated, requests = con.execute(
        "SELECT rows_done, cache_hits, deduplicated, requests FROM aiquery_query_usage() "
        "WHERE statement LIKE 'CREATE TABLE s%'").fetchone()
    assert rows_done == 500 and requests == 50 - cache_hits
    assert cache_hits > 0 and deduplicated == 450 and requests + cache_hits + deduplicated == rows_done
