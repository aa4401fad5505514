"""`aiquery shell` (and `aiquery` alone): an interactive SQL shell with every aiquery function.

It behaves like DuckDB's own shell: a statement may span lines and runs when a line ends it with
';', Up and Down recall earlier statements (kept in ~/.aiquery_history), results print as tables,
and dot commands do the rest (.help lists them). Ctrl-C while a statement runs cancels that
statement (its requests in flight too; answers received stay cached) and returns to the prompt;
Ctrl-C at the prompt clears the line; Ctrl-D leaves.

The statement runs on a thread of its own while the main thread waits for it, so that Ctrl-C
reaches Python at once, where the shell's handler calls con.interrupt(): aiquery's wrapper of it
cancels the connection's requests (aiquery/_process.py), then DuckDB stops the statement. Python's readline is the line editor (GNU
readline or libedit, whichever Python was built with).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Any

import duckdb

from . import _process, _script
from ._dialect import dialect_name
from ._errors import AIQueryError, QueryInterrupted
from ._registration import registration_of
from ._scrub import printable

RESULT_TABLE = "__aiquery_result"
HISTORY_FILE = ".aiquery_history"
PROMPT, CONTINUATION = "aiquery> ", "     ..> "
HELP = """\
SQL statements end with ';' and may span lines. Ctrl-C cancels a running statement, Ctrl-D leaves.
.dialect [databricks|duckdb]  show or set the SQL dialect (databricks: Databricks SQL is translated)
.endpoints                    the endpoints ai_query can call: name, task, provider, model, URL
.help                         this text
.tables                       the tables and views
.usage                        requests, cache hits, retries, errors, tokens and cost per endpoint
.quit / .exit                 leave (or Ctrl-D)"""


def complete(text: str) -> bool:
    """Whether `text` ends with a ';' that is outside strings, quoted names and comments."""
    ended, i, n = False, 0, len(text)
    while i < n:
        char = text[i]
        if char in "'\"":
            close = text.find(char, i + 1)
            while close != -1 and close + 1 < n and text[close + 1] == char:  # '' and "" inside
                close = text.find(char, close + 2)
            if close == -1:
                return False
            i, ended = close + 1, False
            continue
        if text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline == -1 else newline
            continue
        if text.startswith("/*", i):
            close = text.find("*/", i + 2)
            if close == -1:
                return False
            i = close + 2
            continue
        if not char.isspace():
            ended = char == ";"
        i += 1
    return ended


class Shell:
    """One interactive session on `con`."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, dialect: str | None = None, out: IO[str] | None = None,
                 err: IO[str] | None = None) -> None:
        self.con, self.dialect = con, dialect_name(dialect)
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self._readline = _readline()

    def loop(self) -> None:
        print(f"aiquery shell, DuckDB {duckdb.__version__}, dialect {self.dialect}. "
              "Statements end with ';'. .help for help.", file=self.out)
        lines: list[str] = []
        while True:
            try:
                line = input(CONTINUATION if lines else PROMPT)
            except KeyboardInterrupt:  # Ctrl-C at the prompt: drop what was typed
                print("^C", file=self.out)
                lines = []
                continue
            except EOFError:  # Ctrl-D
                print(file=self.out)
                return
            if not lines and line.strip().startswith("."):
                if not self.command(line.strip()):
                    return
                continue
            if not lines and not line.strip():
                continue
            lines.append(line)
            text = "\n".join(lines)
            if complete(text):
                self._remember(lines)
                lines = []
                self.run(text)

    def _remember(self, lines: list[str]) -> None:
        """A statement typed on several lines is recalled as one entry."""
        readline = self._readline
        if readline is None or len(lines) < 2:
            return
        for _ in lines:
            length = readline.get_current_history_length()
            if length:
                readline.remove_history_item(length - 1)
        readline.add_history(" ".join(line.strip() for line in lines))

    def command(self, line: str) -> bool:
        """Runs a dot command; False for .quit."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in (".quit", ".exit", ".q"):
            return False
        if name == ".help":
            print(HELP, file=self.out)
        elif name == ".dialect":
            if rest:
                try:
                    self.dialect = dialect_name(rest)
                except AIQueryError as exc:
                    print(f"Error: {exc}", file=self.err)
            print(f"dialect: {self.dialect}", file=self.out)
        elif name == ".endpoints":
            from ._cli import endpoint_rows, print_table

            print_table(endpoint_rows(registration_of(self.con).endpoints), file=self.out)
        elif name == ".tables":
            self.run("SHOW TABLES;", dialect="duckdb")
        elif name == ".usage":
            self.run("SELECT endpoint, model, requests, cache_hits, retries, errors, total_tokens, latency_p95_ms, "
                     "cost_usd FROM aiquery_usage() ORDER BY endpoint;", dialect="duckdb")
        else:
            print(f"Error: unknown command {name}; .help lists the commands", file=self.err)
        return True

    def run(self, text: str, dialect: str | None = None) -> None:
        """Runs every statement of `text`, printing results; errors and Ctrl-C end it and are reported."""
        dialect = dialect or self.dialect
        try:
            statements = _script.statements(self.con, text, dialect)
            for statement in statements:
                result = self._cancellable(lambda s=statement: self._execute(s, text, dialect))
                registration_of(self.con).settle_displays()  # its progress line is closed before the result
                if result is not None:
                    print(result, file=self.out)
        except KeyboardInterrupt:
            print("query interrupted (answers received so far are cached: run it again to send only the rest)",
                  file=self.err)
        except (AIQueryError, duckdb.Error) as exc:
            if _interrupted(exc):
                print("query interrupted (answers received so far are cached: run it again to send only the rest)",
                      file=self.err)
            else:
                print(f"Error: {printable(str(exc))}", file=self.err)  # no terminal controls a server sent

    def _execute(self, statement: duckdb.Statement, text: str, dialect: str) -> Any:
        """One statement: a query's rows kept in a temporary table and shown from there (showing a
        relation would run it, and call its models, again); other statements' results as they come."""
        if statement.type == duckdb.StatementType.SELECT:
            _script.run(lambda q: self.con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULT_TABLE} AS {q}"),
                        statement, text, dialect)
            return self.con.table(RESULT_TABLE)
        _process.note_statement(self.con, statement.query)
        return _script.run(self.con.sql, statement, text, dialect)

    def _cancellable(self, work):
        """work() on a thread of its own. Meanwhile Ctrl-C calls con.interrupt() (aiquery's wrapper
        cancels the connection's requests, then DuckDB stops), and then this raises KeyboardInterrupt."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc

        interrupted = threading.Event()

        def on_sigint(signum: int, frame: Any) -> None:
            interrupted.set()
            self.con.interrupt()

        thread = threading.Thread(target=target, name="aiquery-shell-statement", daemon=True)
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            thread.start()
            thread.join()  # the handler runs while this waits, which goes on waiting after it
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted.is_set():
            raise KeyboardInterrupt
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")


def _interrupted(exc: BaseException) -> bool:
    return isinstance(exc, (QueryInterrupted, duckdb.InterruptException)) or "query interrupted" in str(exc).lower()


def _readline():
    """Python's readline with the history file loaded (saved at exit), or None where there is none."""
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        return None
    path = Path(os.environ.get("AIQUERY_HISTORY") or Path.home() / HISTORY_FILE)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    import atexit

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)

    atexit.register(save)
    return readline
