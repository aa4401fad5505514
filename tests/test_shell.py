"""The interactive shell (`aiquery`, `aiquery shell`), driven in a real pseudo-terminal with pexpect."""

from __future__ import annotations

import os
import signal
import sys

import pexpect
import pytest

from aiquery._shell import complete
from conftest import CANARY_KEY
from waiting import wait_for

PROMPT, MORE = "aiquery> ", r"\.\.> "
UP = "\x1b[A"


@pytest.fixture
def shell(server, tmp_path, cache_dir):
    """Starts `python -m aiquery._cli [args]` in a pty, its endpoints on the fake server."""
    config = tmp_path / "aiquery.toml"
    config.write_text(f'[endpoints.chat]\nbase_url = "{server.openai_base}"\nmodel = "fake-chat"\n'
                      'api_key_env = "FAKE_KEY"\n')
    env = {**os.environ, "FAKE_KEY": CANARY_KEY, "HOME": str(tmp_path), "AIQUERY_CACHE_DIR": str(cache_dir),
           "AIQUERY_PROGRESS": "1", "TERM": "xterm"}
    children = []

    def start(*args: str) -> pexpect.spawn:
        child = pexpect.spawn(sys.executable, ["-m", "aiquery._cli", *args, "--config", str(config)], env=env,
                              cwd=str(tmp_path), encoding="utf-8", timeout=60, dimensions=(50, 160))
        children.append(child)
        child.expect("Statements end with ';'")
        child.expect(PROMPT)
        return child

    yield start
    for child in children:  # the test is over: end each shell now, and wait until it has gone
        if child.isalive():  # (pexpect's close(force=True) gives a killed process 0.1 s, too little when busy)
            child.kill(signal.SIGKILL)
        child.wait()
        child.close()


def recall(child: pexpect.spawn, shown: list[str]) -> None:
    """Presses Up once for each line of `shown`, waiting for readline to show it (it redraws only what
    differs from the line before), then Enter."""
    for text in shown:
        child.send(UP)
        child.expect(text)
    child.send("\r")


@pytest.mark.slow  # a terminal (pexpect) running the shell
def test_multi_line_statements_tables_dot_commands_and_history(shell, server, tmp_path):
    child = shell()
    child.sendline("SELECT ai_query('chat',")
    child.expect(MORE)
    child.sendline("  'from the shell') AS answer;")
    child.expect(r"│\s+answer\s+│")
    child.expect(r"│ echo: from the shell │")
    child.expect(PROMPT)
    assert len(server.requests) == 1  # shown from a temporary table: not run a second time
    child.sendline(".help")
    child.expect(r"\.usage\s+requests, cache hits")
    child.expect(PROMPT)
    child.sendline(".endpoints")
    child.expect(r"chat\s+chat\s+openai\s+fake-chat\s+" + server.openai_base)
    child.expect(PROMPT)
    child.sendline(".usage")
    child.expect(r"│ chat\s+│ fake-chat\s+│\s+1 │")
    child.expect(PROMPT)
    recall(child, ["usage", "endpoints", "help", "SELECT ai_query\\('chat', 'from the shell'\\) AS answer;"])
    child.expect(r"│ echo: from the shell │")
    child.expect(PROMPT)
    assert len(server.requests) == 1  # the same request again: answered from the cache
    child.sendline(".nope")
    child.expect("unknown command .nope; .help lists the commands")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    assert child.wait() == 0
    history = (tmp_path / ".aiquery_history").read_text()
    assert "SELECT ai_query('chat', 'from the shell') AS answer;" in history
    again = shell()  # a new session recalls the last session's statements
    recall(again, ["nope", "SELECT ai_query"])  # the newest first: .nope, then the recalled statement
    again.expect(r"│ echo: from the shell │")


@pytest.mark.slow  # a terminal (pexpect) running the shell
def test_ctrl_c_cancels_the_running_statement_and_not_the_shell(shell, server):
    child = shell()
    child.sendline("SELECT i, ai_query('chat', 'slow ' || i || ' [[sleep=300]]') FROM range(3) t(i);")
    wait_for(lambda: len(server.requests) == 3)  # all three in flight
    child.expect(r"0/3 .*requests=3")  # the progress line (rows done of 3), after the first second
    child.sendintr()
    child.expect("query interrupted", timeout=60)  # long before the answers (300 s): it did not wait
    child.expect(PROMPT)
    wait_for(lambda: all(r.client_gone for r in server.requests), what="the client to hang up on each")
    child.sendline("SELECT 6 * 7 AS n;")  # the shell and its connection still work
    child.expect(r"│\s+42 │")
    child.expect(PROMPT)
    child.sendline(".usage")
    child.expect(r"│ chat\s+│ fake-chat\s+│\s+3 │")
    child.expect(PROMPT)
    assert len(server.requests) == 3  # nothing was sent after the interrupt


def ctrl_c_at_the_prompt(child: pexpect.spawn) -> None:
    """Ctrl-C once readline shows what was typed, then the fresh prompt. CPython's readline waits in
    select() for the next key when a signal lands while it handles a key, so a second Ctrl-C is
    pressed if the first found it there (a person would press it again too)."""
    child.sendintr()
    if child.expect([PROMPT, pexpect.TIMEOUT], timeout=5) == 1:
        child.sendintr()
        child.expect(PROMPT)


@pytest.mark.slow  # a terminal (pexpect) running the shell
def test_ctrl_c_at_the_prompt_clears_the_line_and_ctrl_d_leaves(shell):
    child = shell()
    child.send("SELECT 'never finished")
    child.expect("never finished")
    ctrl_c_at_the_prompt(child)
    child.sendline("SELECT 'fresh' AS s;")  # had the old text stayed, this would be inside its string
    child.expect(r"│ fresh\s*│")
    child.expect(PROMPT)
    child.sendline("SELECT 'half")
    child.expect(MORE)
    ctrl_c_at_the_prompt(child)  # also drops the lines of an unfinished statement
    child.sendline("SELECT 1 AS one;")
    child.expect(r"│\s+1 │")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    assert child.wait() == 0


@pytest.mark.slow  # a terminal (pexpect) running the shell
def test_errors_keep_the_shell_and_the_databricks_dialect_runs_there(shell, server):
    child = shell()
    child.sendline("""SELECT ai_query("chat", "x");""")
    child.expect(r'(?s)Error: [^\n]*Referenced column "chat" (was )?not found.*hint: Databricks reads "chat" as a string')
    child.expect(PROMPT)
    child.sendline(".dialect databricks")
    child.expect("dialect: databricks")
    child.expect(PROMPT)
    child.sendline("""SELECT ai_query("chat", "in Databricks SQL") AS a, size(array(1, 2)) AS n;""")
    child.expect(r"│ echo: in Databricks SQL │\s+2 │")
    child.expect(PROMPT)
    child.sendline(".dialect mysql")
    child.expect("dialect must be one of databricks, duckdb")
    child.expect("dialect: databricks")


@pytest.mark.slow  # a terminal (pexpect) running the shell
def test_a_database_file_opens_without_a_command(shell, tmp_path):
    db = tmp_path / "data.duckdb"
    child = shell(str(db))
    child.sendline("CREATE TABLE kept AS SELECT 7 AS n;")
    child.expect(PROMPT)
    child.sendline(".tables")
    child.expect(r"│ kept\s*│")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    again = shell("shell", str(db))
    again.sendline("SELECT n FROM kept;")
    again.expect(r"│\s+7 │")


@pytest.mark.parametrize("text, ended", [
    ("SELECT 1;", True), ("SELECT 1", False), ("SELECT ';'", False), ("SELECT ';';", True),
    ("SELECT 1; -- done", True), ("SELECT 1 -- not yet;", False), ("SELECT /* ; */ 1", False),
    ('SELECT "a;b"', False), ("SELECT 'it''s;'", False), ("SELECT 'it''s';", True), ("SELECT 'open", False),
    ("/* open", False), ("SELECT 1;\n  ", True),
])
def test_a_statement_is_complete_at_a_semicolon_outside_strings_and_comments(text, ended):
    assert complete(text) is ended
