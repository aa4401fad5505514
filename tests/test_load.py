"""Load: many connections, cursors and threads querying at once through the one shared engine.

What a user running several notebooks' worth of queries in one process would notice: every thread
gets all of its rows, each right; an endpoint's `max_concurrency` holds for all of them together
(the connections share `Engine.shared()`); each distinct request is paid for once; interrupting or
failing one query leaves the others alone; and nothing deadlocks. A deadlock fails the test after
DEADLINE seconds with the stacks of the threads that are stuck, instead of hanging CI.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import duckdb
import pytest

import aiquery
from fakeserver import FakeServer, embed

pytestmark = pytest.mark.slow  # several connections and threads at full load

ROWS = 2000      # rows per thread
LIMIT = 16       # max_concurrency of the chat endpoint, shared by every connection
LATENCY = 0.01   # seconds per request at the fake server
DEADLINE = 180   # seconds for all threads together; the work takes about 10-20 s on 2 cores


# ---------------------------------------------------------------- helpers


class Load:
    """Runs jobs on threads at once; a job still running after the deadline fails the test."""

    def __init__(self) -> None:
        self.connections: list[duckdb.DuckDBPyConnection] = []
        self.stuck = False  # then closing a connection a stuck thread is using could hang too

    def connect(self, **settings: Any) -> duckdb.DuckDBPyConnection:
        con = aiquery.connect(**settings)
        self.connections.append(con)
        return con

    def run(self, jobs: dict[str, Callable[[], Any]], deadline: float = DEADLINE) -> dict[str, Any]:
        results: dict[str, Any] = {}
        failures: dict[str, str] = {}

        def body(name: str, job: Callable[[], Any]) -> None:
            try:
                results[name] = job()
            except BaseException:
                failures[name] = traceback.format_exc()

        threads = {name: threading.Thread(target=body, args=(name, job), name=f"load-{name}", daemon=True)
                   for name, job in jobs.items()}
        for thread in threads.values():
            thread.start()
        end = time.monotonic() + deadline
        for thread in threads.values():
            thread.join(max(0.0, end - time.monotonic()))
        stuck = [name for name, thread in threads.items() if thread.is_alive()]
        if stuck:
            stacks = _stacks([threads[name] for name in stuck])
            self.stuck = True
            for con in self.connections:  # try to let the stuck threads go before failing
                try:
                    con.interrupt()
                except Exception:
                    pass
            pytest.fail(f"deadlock: after {deadline} s these threads had not finished: {', '.join(stuck)} "
                        f"(finished: {', '.join(sorted(results)) or 'none'}). Their Python stacks and aiquery's "
                        f"threads' are below; to see native frames too, reproduce and run "
                        f"`py-spy dump --native --pid PID` while it hangs.\n{stacks}", pytrace=False)
        if failures:
            pytest.fail("\n".join(f"thread {name} failed:\n{tb}" for name, tb in failures.items()), pytrace=False)
        return results

    def close(self) -> None:
        if not self.stuck:
            for con in reversed(self.connections):  # cursors before their connection
                con.close()


def _stacks(stuck: list[threading.Thread]) -> str:
    """The Python stacks of the stuck threads and of aiquery's own threads (loop, prefetchers, cache)."""
    frames = sys._current_frames()
    shown = stuck + [t for t in threading.enumerate() if t.name.startswith("aiquery") and t not in stuck]
    parts = []
    for thread in shown:
        frame = frames.get(thread.ident)
        if frame is not None:
            parts.append(f"--- thread {thread.name}:\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


@pytest.fixture
def load():
    runner = Load()
    yield runner
    runner.close()


def cursor_with_ai_query(load: Load, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of an aiquery connection: it has ai_query as its connection does."""
    cursor = con.cursor()
    load.connections.append(cursor)
    return cursor


def chat_prompts(server: FakeServer) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in server.requests if r.path.endswith("/chat/completions")]


def embedded_texts(server: FakeServer) -> list[str]:
    texts = []
    for r in server.requests:
        if r.path.endswith("/embeddings"):
            texts.extend(r.body["input"] if isinstance(r.body["input"], list) else [r.body["input"]])
    return texts


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an interval ending when another starts does not overlap)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def peak_in_flight_for_client(server: FakeServer, let_go: dict[str, float]) -> int:
    """The server's peak in flight as the client saw it: requests whose prompt holds a key of
    `let_go` count only until that moment, and not at all if they arrived after it."""
    now = time.monotonic()
    intervals = []
    for r in server.requests:
        prompt = r.body["messages"][-1]["content"]
        end = r.answered or now
        cut = next((t for key, t in let_go.items() if key in prompt), None)
        if cut is not None:
            if r.arrived >= cut:
                continue
            end = min(end, cut)
        intervals.append((r.arrived, end))
    return peak_overlap(intervals)


def echoed(prefix: str, rows: int = ROWS) -> list[tuple[int, str]]:
    return [(i, f"echo: {prefix} row {i}") for i in range(rows)]


# ---------------------------------------------------------------- tests


def test_connections_cursors_and_threads_at_once_share_one_limit(load):
    """4 threads with a connection each (CTAS, SELECT, INSERT ... SELECT, a streamed fetch), two
    threads with a cursor each of one connection running the same statement, and one thread
    alternating between two cursors of another connection, all on one chat endpoint."""
    with FakeServer(latency=LATENCY) as server:
        chat = {"chat": {"base_url": server.openai_base, "model": "m", "max_concurrency": LIMIT}}

        def own_connection(k: int, shape: str) -> Callable[[], list]:
            def job() -> list:
                con = load.connect(endpoints=chat)
                con.execute(f"CREATE TABLE t AS SELECT i, 'c{k} row ' || i AS p FROM range({ROWS}) r(i)")
                if shape == "ctas":
                    con.execute("CREATE TABLE s AS SELECT i, ai_query('chat', p) AS a FROM t")
                    return con.sql("SELECT i, a FROM s ORDER BY i").fetchall()
                if shape == "select":
                    return sorted(con.sql("SELECT i, ai_query('chat', p) FROM t").fetchall())
                if shape == "insert":
                    con.execute("CREATE TABLE s (i BIGINT, a VARCHAR)")
                    con.execute("INSERT INTO s SELECT i, ai_query('chat', p) FROM t")
                    return con.sql("SELECT i, a FROM s ORDER BY i").fetchall()
                result = con.execute("SELECT i, ai_query('chat', p) FROM t ORDER BY i")  # streamed
                rows = []
                while chunk := result.fetchmany(300):
                    rows.extend(chunk)
                return rows
            return job

        shared = load.connect(endpoints=chat)
        shared.execute(f"CREATE TABLE t AS SELECT i, 'cur row ' || i AS p FROM range({ROWS}) r(i)")
        same_sql = "SELECT i, ai_query('chat', p) FROM t"

        def on_cursor(cursor: duckdb.DuckDBPyConnection) -> Callable[[], list]:
            return lambda: sorted(cursor.sql(same_sql).fetchall())

        other = load.connect(endpoints=chat)
        other.execute(f"CREATE TABLE t AS SELECT i, 'row ' || i AS p FROM range({ROWS // 2}) r(i)")
        x, y = cursor_with_ai_query(load, other), cursor_with_ai_query(load, other)

        def alternating() -> tuple[list, list]:
            """One thread, two queries open at once: fetches 250 rows of one, then of the other."""
            rx = x.execute("SELECT i, ai_query('chat', 'x ' || p) FROM t ORDER BY i")
            ry = y.execute("SELECT i, ai_query('chat', 'y ' || p) FROM t ORDER BY i")
            got_x, got_y = [], []
            while True:
                a, b = rx.fetchmany(250), ry.fetchmany(250)
                got_x += a
                got_y += b
                if not a and not b:
                    return got_x, got_y

        jobs = {f"conn{k}-{shape}": own_connection(k, shape)
                for k, shape in enumerate(["ctas", "select", "insert", "stream"])}
        jobs["cursor-a"] = on_cursor(cursor_with_ai_query(load, shared))
        jobs["cursor-b"] = on_cursor(cursor_with_ai_query(load, shared))
        jobs["two-cursors-one-thread"] = alternating
        results = load.run(jobs)

        for k, shape in enumerate(["ctas", "select", "insert", "stream"]):
            assert results[f"conn{k}-{shape}"] == echoed(f"c{k}"), f"conn{k}-{shape}: rows missing or wrong"
        assert results["cursor-a"] == results["cursor-b"] == echoed("cur")
        assert results["two-cursors-one-thread"] == (echoed("x", ROWS // 2), echoed("y", ROWS // 2))

        # Every distinct request sent exactly once: nothing lost, nothing paid twice (the two cursors
        # asked for the same rows at the same time, and got them from one request each).
        sent = collections.Counter(chat_prompts(server))
        expected = {f"{p} row {i}" for p in ("c0", "c1", "c2", "c3", "cur") for i in range(ROWS)}
        expected |= {f"{p} row {i}" for p in ("x", "y") for i in range(ROWS // 2)}
        assert set(sent) == expected and set(sent.values()) == {1}, \
            f"{len(sent)} distinct prompts sent, {sum(n > 1 for n in sent.values())} more than once"
        assert {r.status for r in server.requests} == {200}
        # Seven threads on six connections and four cursors, one limit; and the load did reach it.
        assert server.peak_in_flight == LIMIT

        # The endpoint is not left stuck or short of slots: a new connection still gets its answers.
        after = load.run({"after": lambda: sorted(load.connect(endpoints=chat).sql(
            "SELECT i, ai_query('chat', 'after row ' || i) FROM range(100) r(i)").fetchall())}, deadline=60)
        assert after["after"] == echoed("after", 100)


def test_chat_embeddings_a_failure_and_an_interrupt_at_once(load):
    """Chat and embeddings endpoints at once (on servers of their own, so each one's peak can be
    read), one query calling both, one query failing on a bad row, and one thread interrupting its
    own connection mid-query: the others finish with every row right, within the limits."""
    embed_limit = 4
    with FakeServer(latency=LATENCY) as chat_server, FakeServer(latency=LATENCY, embedding_dim=8) as embed_server:
        endpoints = {
            "chat": {"base_url": chat_server.openai_base, "model": "m", "max_concurrency": LIMIT},
            "embed": {"task": "embeddings", "base_url": embed_server.openai_base, "model": "e",
                      "max_concurrency": embed_limit, "batch_size": 8},
        }
        interrupted = threading.Event()
        marks: dict[str, Any] = {}

        def chat_only(k: int) -> Callable[[], list]:
            def job() -> list:
                con = load.connect(endpoints=endpoints)
                return sorted(con.sql(f"SELECT i, ai_query('chat', 'c{k} row ' || i) FROM range({ROWS}) r(i)")
                              .fetchall())
            return job

        def embeddings_only() -> list:
            con = load.connect(endpoints=endpoints)
            return sorted(con.sql(f"SELECT i, ai_query('embed', 'e row ' || i) FROM range({ROWS}) r(i)").fetchall())

        def both_in_one_query() -> list:
            con = load.connect(endpoints=endpoints)
            con.execute(f"CREATE TABLE t AS SELECT i, 'b row ' || i AS p FROM range({ROWS // 2}) r(i)")
            con.execute("CREATE TABLE s AS SELECT i, ai_query('chat', p) AS a, ai_query('embed', p) AS v FROM t")
            return con.sql("SELECT i, a, v FROM s ORDER BY i").fetchall()

        def failing() -> tuple[str, list]:
            con = load.connect(endpoints=endpoints)
            prompt = "CASE WHEN i = 700 THEN 'bad row [[status=400]]' ELSE 'f row ' || i END"
            with pytest.raises(duckdb.Error) as error:
                con.sql(f"SELECT ai_query('chat', {prompt}) FROM range({ROWS}) r(i)").fetchall()
            after = con.sql("SELECT i, ai_query('chat', 'f-after row ' || i) FROM range(50) r(i)").fetchall()
            return str(error.value), sorted(after)

        def interrupting() -> tuple[str, list]:
            con = load.connect(endpoints=endpoints)

            def interrupt_mid_query() -> None:
                # Once some of its slow rows are answered and others are still at the server.
                deadline = time.monotonic() + DEADLINE
                while time.monotonic() < deadline:
                    mine = [r for r in chat_server.requests if r.body and "int row" in str(r.body.get("messages"))]
                    if any(r.status == 200 for r in mine) and any(r.status == 0 for r in mine):
                        break
                    time.sleep(0.01)
                marks["others_running"] = [t.name for t in threading.enumerate()
                                           if t.name.startswith("load-") and "interrupt" not in t.name]
                marks["interrupted_at"] = time.monotonic()
                interrupted.set()
                con.interrupt()

            trigger = threading.Thread(target=interrupt_mid_query, daemon=True)
            trigger.start()
            # 100,000 rows of 0.3 s each: it cannot finish on its own.
            with pytest.raises(duckdb.Error, match="(?i)interrupt") as error:
                con.sql("SELECT count(ai_query('chat', 'int row ' || i || ' [[sleep=0.3]]')) FROM range(100000) r(i)") \
                    .fetchall()
            marks["returned_at"] = time.monotonic()
            trigger.join(5)
            after = con.sql("SELECT i, ai_query('chat', 'int-after row ' || i) FROM range(50) r(i)").fetchall()
            return str(error.value), sorted(after)

        jobs = {"chat-0": chat_only(0), "chat-1": chat_only(1), "embed": embeddings_only,
                "chat+embed": both_in_one_query, "failing": failing, "interrupt": interrupting}
        results = load.run(jobs)

        assert interrupted.is_set()
        assert marks["others_running"], "the interrupt came after every other thread had finished"
        for k in (0, 1):
            assert results[f"chat-{k}"] == echoed(f"c{k}")
        vectors = results["embed"]
        assert [i for i, _ in vectors] == list(range(ROWS))
        for i, v in vectors:  # each row got its own text's vector, not a neighbour's from the same batch
            assert v == pytest.approx(embed(f"e row {i}", 8), abs=1e-6), f"row {i}"
        both = results["chat+embed"]
        assert [(i, a) for i, a, _ in both] == echoed("b", ROWS // 2)
        assert all(v == pytest.approx(embed(f"b row {i}", 8), abs=1e-6) for i, _, v in both)
        message, after = results["failing"]
        assert "HTTP 400" in message and "endpoint 'chat'" in message
        assert after == echoed("f-after", 50)
        message, after = results["interrupt"]
        assert after == echoed("int-after", 50)  # the interrupted connection still works

        # Each request of the queries that completed was sent once.
        sent = collections.Counter(chat_prompts(chat_server))
        completed = {f"{p} row {i}" for p in ("c0", "c1") for i in range(ROWS)}
        completed |= {f"b row {i}" for i in range(ROWS // 2)}
        completed |= {f"{p} row {i}" for p in ("f-after", "int-after") for i in range(50)}
        assert completed <= set(sent) and {sent[p] for p in completed} == {1}
        texts = collections.Counter(embedded_texts(embed_server))
        assert set(texts) == {f"e row {i}" for i in range(ROWS)} | {f"b row {i}" for i in range(ROWS // 2)}
        assert set(texts.values()) == {1}
        # The interrupted query stopped sending: what reached the server after it returned is at most
        # what was already leaving when it did (one request per slot).
        late = [r for r in chat_server.requests if "int row" in str(r.body.get("messages")) and
                r.arrived > marks["returned_at"]]
        assert len(late) <= LIMIT, f"{len(late)} requests of the interrupted query arrived after it returned"

        # The limits held. The embeddings server saw only this endpoint's requests.
        assert embed_server.peak_in_flight <= embed_limit
        # The chat server keeps serving a request whose client gave up (aiohttp does not cancel the
        # handler), so its own gauge also counts the requests the failed and the interrupted query
        # abandoned, next to the ones that took their slots (measured: 31 at once, for a limit of 16).
        # What the client had out: each request from its arrival to its answer, but the abandoned
        # queries' requests only until the client could have let them go (the failing row's answer,
        # the interrupt); those that arrived after that moment are left out.
        bad = next(r for r in chat_server.requests if "bad row" in r.body["messages"][-1]["content"])
        assert peak_in_flight_for_client(chat_server, {"f row": bad.answered,
                                                        "int row": marks["interrupted_at"]}) <= LIMIT
