"""Any number of aiquery connections and cursors, to one database file or to :memory:, opened and
closed in any order, each answering with its own endpoints.

Two connections to one database file share its catalog of Python functions (a second
registration under the same names used to fail with `Scalar Function ... already exists`, and a
function of a closed connection called from another crashed the process), so each registration's
functions are numbered and only its own macros call them."""

from __future__ import annotations

import itertools
import subprocess
import sys

import duckdb
import pytest

import aiquery

SQL = "SELECT ai_query('chat', 'hi') AS a"


def endpoint(endpoints, model):
    return {"chat": {**endpoints["chat"], "model": model}}


def answer(con) -> str:
    return con.execute(SQL).fetchone()[0]


@pytest.mark.parametrize("database", ["file", ":memory:"])
def test_two_connections_to_one_database_each_use_their_own_endpoints(endpoints, server, tmp_path, database):
    path = str(tmp_path / "data.duckdb") if database == "file" else ":memory:"
    first = aiquery.connect(path, endpoints=endpoint(endpoints, "model-a"))
    second = aiquery.connect(path, endpoints=endpoint(endpoints, "model-b"))
    try:
        assert answer(first) == answer(second) == "echo: hi"
        assert [b["model"] for b in server.bodies("/chat/completions")] == ["model-a", "model-b"]
    finally:
        first.close()
        second.close()


ORDERS = list(itertools.permutations(["a", "b", "cursor of a"]))


@pytest.mark.slow
@pytest.mark.parametrize("order", ORDERS, ids=lambda o: " then ".join(o))
def test_connections_and_cursors_closed_in_any_order_leave_the_others_working(endpoints, server, tmp_path, order):
    path = str(tmp_path / "data.duckdb")
    a = aiquery.connect(path, endpoints=endpoint(endpoints, "model-a"))
    b = aiquery.connect(path, endpoints=endpoint(endpoints, "model-b"))
    handles = {"a": a, "b": b, "cursor of a": a.cursor()}
    open_ = dict(handles)
    for name in order:
        if name not in open_:
            continue
        open_.pop(name).close()
        if name == "a":
            open_.pop("cursor of a", None)  # DuckDB closes a connection's cursors with it
        for other_name, other in open_.items():
            assert answer(other) == "echo: hi", f"{other_name} after closing {name}"
    reopened = aiquery.connect(path, endpoints=endpoint(endpoints, "model-c"))
    assert answer(reopened) == "echo: hi"
    reopened.close()


def test_a_connection_registered_again_answers_with_the_new_endpoints(endpoints, server, tmp_path):
    con = aiquery.connect(str(tmp_path / "data.duckdb"), endpoints=endpoint(endpoints, "model-a"))
    aiquery.register(con, endpoints=endpoint(endpoints, "model-b"))
    assert answer(con) == answer(con.cursor()) == "echo: hi"
    assert {b["model"] for b in server.bodies("/chat/completions")} == {"model-b"}
    con.close()


@pytest.mark.slow
def test_many_connections_and_cursors_at_once(endpoints, server, tmp_path):
    path = str(tmp_path / "data.duckdb")
    connections = [aiquery.connect(path, endpoints=endpoint(endpoints, f"m{i}")) for i in range(6)]
    cursors = [con.cursor() for con in connections for _ in range(2)]
    for i, handle in enumerate(connections + cursors):
        assert handle.execute(f"SELECT ai_query('chat', 'n{i}')").fetchone()[0] == f"echo: n{i}"
    for handle in cursors[::2] + connections[::-1]:
        handle.close()


def test_aiquery_dataset_of_a_second_connection_works_after_the_first_closed(tmp_path):
    path = str(tmp_path / "data.duckdb")
    first = aiquery.connect(path, endpoints={})
    second = aiquery.connect(path, endpoints={})
    first.close()
    with pytest.raises(duckdb.Error, match="aiquery_dataset: unknown dataset 'nope'"):
        second.sql("SELECT aiquery_dataset('nope')").fetchall()
    second.close()


def test_a_plain_duckdb_connection_to_the_same_file_is_untouched(endpoints, tmp_path):
    path = str(tmp_path / "data.duckdb")
    con = aiquery.connect(path, endpoints=endpoints)
    plain = duckdb.connect(path)
    with pytest.raises(duckdb.CatalogException, match="ai_query"):
        plain.sql("SELECT ai_query('chat', 'hi')").fetchall()
    assert plain.cursor().execute("SELECT 42").fetchone() == (42,)
    plain.close()
    con.close()


def test_the_cli_twice_in_one_process_on_one_database(endpoints, server, tmp_path):
    """`aiquery run --db` twice in one process (a notebook cell run twice) used to fail the second time."""
    from aiquery._cli import main

    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{server.openai_base}"\nmodel = "m"\napi_key_env = "FAKE_KEY"\n')
    db = str(tmp_path / "data.duckdb")
    for run in range(2):
        assert main(["run", "--db", db, "--config", str(config), "-e",
                     f"CREATE OR REPLACE TABLE t{run} AS SELECT ai_query('chat', 'run {run}') AS a"]) == 0


@pytest.mark.slow  # a subprocess
def test_a_process_with_connections_left_open_exits_cleanly(endpoints, server, tmp_path):
    script = f"""
import aiquery
path = {str(tmp_path / 'data.duckdb')!r}
endpoints = {{"chat": {{"base_url": {server.openai_base!r}, "model": "m", "api_key_env": "FAKE_KEY"}}}}
a = aiquery.connect(path, endpoints=endpoints)
b = aiquery.connect(path, endpoints=endpoints)
c = a.cursor()
print(c.execute("SELECT ai_query('chat', 'x')").fetchone()[0])
a.close()
print(b.execute("SELECT ai_query('chat', 'y')").fetchone()[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["echo:", "x", "echo:", "y"]


@pytest.mark.slow
def test_a_forked_child_makes_its_own_shared_engine(endpoints, server):
    """The shared engine's loop thread and HTTP child stay in the parent: a forked child (a
    multiprocessing pool, a web server's workers) used to hang on its first query."""
    import os

    con = aiquery.connect(endpoints=endpoints)
    assert answer(con) == "echo: hi"  # the parent's shared engine is running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a connection of its own, through a shared engine of its own
        try:
            child = aiquery.connect(endpoints=endpoints)
            os.write(write, child.execute("SELECT ai_query('chat', 'from the child')").fetchone()[0].encode())
        finally:
            os._exit(0)
    os.close(write)
    import select
    try:
        assert select.select([read], [], [], 60)[0], "the forked child hung on its first query"
        with os.fdopen(read) as reply:
            assert reply.read() == "echo: from the child"
    finally:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == 0:  # still there: it hung
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert answer(con) == "echo: hi"
