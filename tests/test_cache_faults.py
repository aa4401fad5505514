"""The response cache when its file is not what it should be: permissions, damage, a held write lock,
no room to write. Queries always get their answers; what the cache could not do is said once (a
CacheWarning naming the file and the command that fixes it) and counted (`cache_not_stored`)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

import aiquery
from aiquery import _cache
from aiquery._cli import main as cli
from fakeserver import FakeServer

ROOT = Path(__file__).resolve().parent.parent
QUERY = "SELECT i, ai_query('chat', 'row ' || i) AS a FROM range({rows}) t(i) ORDER BY i"
NOBODY = 65534


def run(endpoints, rows: int) -> list[tuple]:
    """`rows` prompts through a new connection and engine (so no answer comes from requests an earlier
    query still holds: only the server or the cache file answers); asserts each row got its own answer."""
    with contextlib.closing(aiquery.Engine()) as engine, aiquery.connect(endpoints=endpoints, engine=engine) as con:
        result = con.sql(QUERY.format(rows=rows)).fetchall()
    assert [i for i, _ in result] == list(range(rows)) and all(a.endswith(f"row {i}") for i, a in result)
    return result


def fill(endpoints, rows: int) -> None:
    """Answers for `rows` prompts in the cache file, written and closed (the WAL checkpointed into it)."""
    run(endpoints, rows)
    _cache.close_all()


def stored(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM responses").fetchone()[0]


def chat_requests(server) -> int:
    return sum(r.path.endswith("/chat/completions") for r in server.requests)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def cache_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def messages(caught) -> str:
    return "\n".join(str(w.message) for w in caught if issubclass(w.category, aiquery.CacheWarning))


# -- permissions -------------------------------------------------------------------------------


def test_a_new_cache_is_private_to_its_user_whatever_the_umask(endpoints, server, tmp_path, monkeypatch):
    target = tmp_path / "shared" / "aiquery"
    monkeypatch.setenv("AIQUERY_CACHE_DIR", str(target))
    umask = os.umask(0)  # every file and directory created world-readable and writable, unless we say otherwise
    try:
        with aiquery.connect(endpoints=endpoints) as con:
            con.sql(QUERY.format(rows=20)).fetchall()
            _cache.open_cache().flush()
            modes = {p.name: mode(p) for p in target.iterdir()}  # while open: -wal and -shm exist
    finally:
        os.umask(umask)
    assert modes == {"responses.sqlite3": 0o600, "responses.sqlite3-wal": 0o600, "responses.sqlite3-shm": 0o600}
    assert mode(target) == 0o700 and mode(target.parent) == 0o700  # the directories it created


@pytest.mark.slow
def test_a_cache_from_an_older_version_is_made_private_and_its_unusable_answers_dropped(endpoints, server, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.delenv("AIQUERY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the default directory: <user cache dir>/aiquery
    directory = tmp_path / "aiquery"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    old = directory / _cache.FILE_NAME
    with contextlib.closing(sqlite3.connect(old)) as db:  # what aiquery wrote before keys covered headers
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE responses (key BLOB PRIMARY KEY, endpoint TEXT NOT NULL, model TEXT, created REAL "
                   "NOT NULL, hits INTEGER NOT NULL DEFAULT 0, answer BLOB NOT NULL) WITHOUT ROWID")
        db.execute("INSERT INTO responses VALUES (x'00', 'chat', 'fake-chat', 0, 0, '{}')")
        db.commit()
    os.chmod(old, 0o644)
    with cache_warnings() as caught:
        run(endpoints, 5)
    assert mode(directory) == 0o700 and mode(old) == 0o600
    assert f"{str(old)!r}" in messages(caught) and "1 answer written by an older aiquery" in messages(caught)
    _cache.close_all()
    assert stored(old) == 5  # the five new answers; the old one is gone
    server.reset()
    run(endpoints, 5)
    assert chat_requests(server) == 0


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cache_file_owned_by_another_user_is_not_used(endpoints, server, cache_dir):
    fill(endpoints, 5)
    path = cache_dir / _cache.FILE_NAME
    os.chown(path, NOBODY, NOBODY)  # say, planted in a shared AIQUERY_CACHE_DIR: its answers could be anything
    before = path.read_bytes()
    server.reset()
    with cache_warnings() as caught:
        run(endpoints, 5)
    assert chat_requests(server) == 5  # none of its answers were used
    assert f"{str(path)!r} belongs to another user (uid {NOBODY})" in messages(caught)
    assert path.read_bytes() == before


def test_a_directory_given_as_the_cache_file_is_said_and_counted(endpoints, server, tmp_path):
    engine = aiquery.Engine()  # usage figures of this test only
    with cache_warnings() as caught, contextlib.closing(engine):
        with aiquery.connect(endpoints=endpoints, engine=engine, cache=tmp_path) as con:
            assert len(con.sql(QUERY.format(rows=5)).fetchall()) == 5
            usage = con.sql("SELECT cache_hits, cache_not_stored FROM aiquery_usage() WHERE endpoint = 'chat'")
            by_query = con.sql("SELECT sum(cache_not_stored) FROM aiquery_query_usage() WHERE endpoint = 'chat'")
            assert usage.fetchall() == [(0, 5)] and by_query.fetchall() == [(5,)]
    assert f"{str(tmp_path)!r} is not a file" in messages(caught)


# -- damage ------------------------------------------------------------------------------------


def garbage_pages(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(3 * 4096))


def truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def not_sqlite(path: Path) -> None:
    path.write_text("this is not a cache\n" * 100)


def future_schema(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")


# one damage that salvages some answers and one that salvages none in the fast lane
@pytest.mark.parametrize("damage, salvaged", [(garbage_pages, "some"),
                                              pytest.param(truncated, "some", marks=pytest.mark.slow),
                                              (not_sqlite, "none"),
                                              pytest.param(future_schema, "none", marks=pytest.mark.slow)])
def test_a_damaged_file_never_fails_a_query_and_repair_keeps_what_is_readable(endpoints, server, cache_dir, capsys,
                                                                              damage, salvaged):
    rows = 400
    fill(endpoints, rows)
    path = cache_dir / _cache.FILE_NAME
    damage(path)
    original = path.read_bytes()
    with cache_warnings() as caught:
        run(endpoints, rows)  # answered in full, without the cache
    said = messages(caught)
    assert f"{str(path)!r}" in said and "aiquery cache repair" in said, said
    _cache.close_all()
    assert cli(["cache"]) == 1
    assert "aiquery cache repair" in capsys.readouterr().err
    assert cli(["cache", "repair"]) == 0
    out = capsys.readouterr().out
    kept = int(out.split("kept ")[1].split()[0].replace(",", ""))
    if salvaged == "some":
        assert 0 < kept < rows, out
    else:
        assert kept == 0, out
        aside = [p for p in cache_dir.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm"))]
        assert [p.read_bytes() for p in aside] == [original] and str(aside[0]) in out  # kept, not deleted
    server.reset()
    run(endpoints, rows)
    assert chat_requests(server) == rows - kept  # exactly the answers repair could not keep
    _cache.close_all()
    server.reset()
    run(endpoints, rows)
    assert chat_requests(server) == 0  # the rebuilt cache stores again


@pytest.mark.slow
def test_cache_clear_starts_afresh_from_a_damaged_file(endpoints, server, cache_dir, capsys):
    fill(endpoints, 400)
    garbage_pages(cache_dir / _cache.FILE_NAME)
    assert cli(["cache", "clear", "--endpoint", "chat"]) == 1  # cannot pick answers out of a damaged file
    assert "aiquery cache repair" in capsys.readouterr().err
    assert cli(["cache", "clear"]) == 0
    assert "the damaged file was replaced by an empty cache" in capsys.readouterr().out
    server.reset()
    with cache_warnings() as caught:
        run(endpoints, 10)
    assert messages(caught) == ""
    _cache.close_all()
    assert stored(cache_dir / _cache.FILE_NAME) == 10


@pytest.mark.slow
def test_an_unreadable_answer_is_sent_again_and_replaced(endpoints, server, cache_dir):
    fill(endpoints, 20)
    path = cache_dir / _cache.FILE_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE responses SET answer = x'00ff' WHERE key = (SELECT min(key) FROM responses)")
        db.commit()
    server.reset()
    with cache_warnings() as caught:
        run(endpoints, 20)
    assert chat_requests(server) == 1 and f"{str(path)!r}" in messages(caught)
    _cache.close_all()
    server.reset()
    run(endpoints, 20)
    assert chat_requests(server) == 0


@pytest.mark.slow
@pytest.mark.parametrize("part", ["-wal", "-shm"])
def test_a_damaged_wal_or_shm_file_loses_at_most_the_answers_after_the_damage(endpoints, server, cache_dir, tmp_path,
                                                                              monkeypatch, part):
    run(endpoints, 100)
    _cache.open_cache().flush()
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    for suffix in ("", "-wal", "-shm"):  # the file as a crash would leave it: answers still in the WAL
        shutil.copy(cache_dir / (_cache.FILE_NAME + suffix), copy)
    damaged = copy / (_cache.FILE_NAME + part)
    with damaged.open("r+b") as f:
        f.seek(damaged.stat().st_size // 2)
        f.write(os.urandom(8192))
    monkeypatch.setenv("AIQUERY_CACHE_DIR", str(copy))
    server.reset()
    with cache_warnings() as caught:
        run(endpoints, 100)
    _cache.close_all()
    path = copy / _cache.FILE_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    kept = 100 - chat_requests(server)
    assert stored(path) == 100 and 0 <= kept <= 100
    if part == "-shm":
        assert kept == 100  # the index is rebuilt from the WAL
    assert messages(caught) == ""  # SQLite drops WAL frames whose checksum fails; nothing a user must do


# -- locking -----------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # the write lock, as a long transaction of another process holds it
    print("locked", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
""")


@contextlib.contextmanager
def write_lock_held(path: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"

        def release() -> None:
            if holder.poll() is None:
                holder.stdin.write("\n")
                holder.stdin.flush()
                assert holder.wait(timeout=30) == 0

        yield release
        release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def new_cache_file(cache_dir: Path) -> Path:
    _cache.open_cache()
    _cache.close_all()
    return cache_dir / _cache.FILE_NAME


CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys, time
    import aiquery
    limit = int(os.environ.get("FILE_SIZE_LIMIT") or 0)
    if limit:  # a full disk: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    con = aiquery.connect(endpoints={"chat": {"base_url": sys.argv[1], "model": "m"}})
    rows = con.execute(f"SELECT i, ai_query('chat', 'row ' || i) FROM range({sys.argv[2]}) t(i)").fetchall()
    right = sum(a.endswith(f"row {i}") for i, a in rows)
    if sys.argv[3] == "close":
        from aiquery import _cache
        _cache.close_all()  # what exit does: commit what is pending, or give up and say so
    not_stored = getattr(aiquery.Engine.shared().stats()["chat"], "cache_not_stored", None)
    print(json.dumps({"right": right, "not_stored": not_stored}), flush=True)
""")


def child(server, rows: int, env: dict, close: bool, wrapper: Sequence[str] = ()) -> tuple[dict, str, float]:
    """Runs CHILD (inside `wrapper`, a command that ends by running its arguments); returns its figures,
    its stderr and how long it took to exit after printing them."""
    proc = subprocess.Popen([*wrapper, sys.executable, "-c", CHILD, server.openai_base, str(rows),
                             "close" if close else "exit"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    line = proc.stdout.readline()
    printed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    exit_seconds = time.monotonic() - printed
    assert proc.returncode == 0 and line, err
    return json.loads(line), err, exit_seconds


@pytest.mark.slow  # a subprocess
def test_a_held_write_lock_is_reported_and_does_not_hold_up_exit(cache_dir):
    path = new_cache_file(cache_dir)
    with FakeServer() as server, write_lock_held(path):
        figures, err, exit_seconds = child(server, 50, {"AIQUERY_CACHE_DIR": str(cache_dir)}, close=False)
    assert exit_seconds < 8, exit_seconds  # the writer gives up after about a second (before: 10 s, every time)
    assert f"50 answers were not stored in {str(path)!r}" in err and "write lock" in err, err
    assert figures == {"right": 50, "not_stored": 0}  # not when it printed: they were waiting for the lock
    assert stored(path) == 0


@pytest.mark.slow
def test_answers_wait_for_a_held_write_lock_and_are_stored_once_it_is_released(endpoints, server, cache_dir,
                                                                             monkeypatch):
    monkeypatch.setattr(_cache, "LOCK_WARN_AFTER", 0.5, raising=False)
    path = new_cache_file(cache_dir)
    engine = aiquery.Engine()  # usage figures of this test only
    with write_lock_held(path) as release, cache_warnings() as caught, contextlib.closing(engine):
        with aiquery.connect(endpoints=endpoints, engine=engine) as con:
            con.sql(QUERY.format(rows=30)).fetchall()
            cache = _cache.open_cache()
            deadline = time.monotonic() + 60
            while "write lock" not in messages(caught) and time.monotonic() < deadline:
                assert not cache.flush(timeout=0.1)
            assert f"{str(path)!r}" in messages(caught) and "30 answers wait" in messages(caught)
            release()
            assert cache.flush(timeout=60)
            usage = con.sql("SELECT cache_not_stored FROM aiquery_usage() WHERE endpoint = 'chat'").fetchall()
    assert usage == [(0,)] and stored(path) == 30
    server.reset()
    run(endpoints, 30)
    assert chat_requests(server) == 0


@pytest.mark.slow
def test_answers_beyond_what_may_wait_for_a_held_lock_are_counted(endpoints, server, cache_dir, monkeypatch):
    monkeypatch.setattr(_cache, "MAX_WAITING", 10, raising=False)
    path = new_cache_file(cache_dir)
    engine = aiquery.Engine()
    with write_lock_held(path) as release, cache_warnings() as caught, contextlib.closing(engine):
        with aiquery.connect(endpoints=endpoints, engine=engine) as con:
            con.sql(QUERY.format(rows=30)).fetchall()
            cache = _cache.open_cache()
            deadline = time.monotonic() + 60
            while cache.not_stored < 20 and time.monotonic() < deadline:
                cache.flush(timeout=0.1)
            release()
            assert cache.flush(timeout=60)
            usage = con.sql("SELECT cache_not_stored FROM aiquery_usage() WHERE endpoint = 'chat'").fetchall()
    assert usage == [(20,)] and stored(path) == 10
    assert f"20 answers were not stored in {str(path)!r}" in messages(caught)


@pytest.mark.slow  # a subprocess
def test_cache_clear_while_another_process_writes_says_so(cache_dir, capsys):
    with write_lock_held(new_cache_file(cache_dir)):
        assert cli(["cache", "clear"]) == 1
    assert "another process is writing to it" in capsys.readouterr().err


# -- no room to write --------------------------------------------------------------------------


READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def read_only(directory: Path) -> list[str]:
    """A command prefix under which `directory` is read-only: its mode for a user, a read-only mount
    (in a mount namespace of the child's own) for root, who writes anywhere else."""
    os.chmod(directory, 0o555)
    if os.geteuid() != 0:
        return []
    wrapper = ["unshare", "--mount", "sh", "-c", READ_ONLY_MOUNT, str(directory)]
    probe = subprocess.run([*wrapper, "touch", str(directory / "probe")], capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"root cannot be kept from writing here (no mount namespace): {probe.stderr.strip()}")
    return wrapper


@pytest.mark.slow
def test_a_read_only_cache_directory_answers_every_row_and_counts_what_it_could_not_store(tmp_path):
    directory = tmp_path / "read-only"
    directory.mkdir()
    wrapper = read_only(directory)
    with FakeServer() as server:
        figures, err, _ = child(server, 20, {"AIQUERY_CACHE_DIR": str(directory)}, close=True, wrapper=wrapper)
        assert chat_requests(server) == 20
    assert figures == {"right": 20, "not_stored": 20}
    assert f"{str(directory / _cache.FILE_NAME)!r} cannot be opened" in err, err
    assert list(directory.iterdir()) == []


@pytest.mark.slow
def test_a_full_disk_answers_every_row_and_counts_what_it_could_not_store(cache_dir):
    path = new_cache_file(cache_dir)
    rows = 600
    with FakeServer() as server:
        figures, err, _ = child(server, rows, {"AIQUERY_CACHE_DIR": str(cache_dir), "FILE_SIZE_LIMIT": "40000"},
                                close=True)
    assert figures["right"] == rows and figures["not_stored"] > 0, figures
    assert f"answers were not stored in {str(path)!r}" in err, err
    assert stored(path) + figures["not_stored"] == rows


# -- another process changed the file, or this one forked -----------------------------------------

REPAIR = "from aiquery._cli import main; raise SystemExit(main(['cache', 'repair']))"


@pytest.mark.slow
@pytest.mark.parametrize("change", ["repaired", "deleted"])
def test_answers_go_to_the_file_at_the_path_after_another_process_replaced_it(endpoints, server, cache_dir, change):
    path = cache_dir / _cache.FILE_NAME
    with aiquery.connect(endpoints=endpoints) as con:
        con.sql(QUERY.format(rows=10)).fetchall()
        assert _cache.open_cache().flush()
        if change == "repaired":  # `aiquery cache repair` in a terminal while this notebook runs
            subprocess.run([sys.executable, "-c", REPAIR], check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        else:  # rm ~/.cache/aiquery/*
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink()
        con.sql(QUERY.format(rows=20)).fetchall()  # ten answers found, ten new ones
        assert _cache.open_cache().flush()
        assert chat_requests(server) == 20
    _cache.close_all()
    assert stored(path) == (20 if change == "repaired" else 10)


def _forked_child(endpoints: dict) -> None:
    # A new engine: the shared one's loop thread did not survive the fork either.
    with aiquery.connect(endpoints=endpoints, engine=aiquery.Engine()) as con:
        rows = con.sql(QUERY.format(rows=10)).fetchall()
    _cache.close_all()
    os._exit(0 if len(rows) == 10 else 1)


@pytest.mark.slow
def test_a_forked_child_stores_its_own_answers(endpoints, server, cache_dir):
    run(endpoints, 5)  # this process's cache is open, with its writer thread
    child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(endpoints,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    _cache.close_all()
    assert stored(cache_dir / _cache.FILE_NAME) == 10  # the child's five new answers too
