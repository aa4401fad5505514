"""The `aiquery` command: run SQL with every aiquery function registered, list endpoints.

    aiquery                                     # an interactive SQL shell (aiquery shell [db] likewise)
    aiquery run quickstart.sql                  # every statement; each result printed as a table
    aiquery run - < job.sql                     # SQL from standard input (so does `aiquery < job.sql`)
    aiquery run --dialect databricks job.sql    # Databricks SQL, translated to DuckDB first
    aiquery run -e "SELECT ai_query('chat', 'hi')" --db data.duckdb
    aiquery run job.sql --output scored.parquet  # or .csv / .json: the last result written there
    aiquery endpoints                            # name, task, provider, model, URL, where settings came from
    aiquery estimate job.sql                     # rows, requests, cache hits, tokens, cost and time; no model called
    aiquery explain job.sql                      # which calls are read ahead of DuckDB, and why not
    aiquery cache                                # the response cache: answers and hits per endpoint
    aiquery cache clear [--endpoint NAME] [--older-than 7d]
    aiquery cache repair                         # a damaged cache rebuilt with the answers it can still read
    aiquery batches                              # batch mode: pending batches, their progress and cost so far
    aiquery batches cancel ID                    # cancel one at its provider (rows done so far stay answered)

A progress line shows on a terminal while a statement runs (--progress / --no-progress to choose).
Each statement runs once: a result is kept in a temporary table and printed or written from
there (DuckDB re-runs a relation every time it is shown or fetched, and a model would be paid again).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import warnings
from pathlib import Path

import duckdb

from . import _script
from ._batch import TERMINAL, BatchStore, batch_cost, refresh, store_path
from ._cache import default_path, open_cache, rebuild
from ._config import OPENAI_BASE_URL, read_settings
from ._dialect import dialect_name, translate, with_hint
from ._errors import AIQueryError, CacheWarning, ConfigError
from ._estimate import estimate
from ._readahead import explain
from ._progress import interactive
from ._registration import connect, registration_of
from ._shell import Shell
from ._scrub import printable, safe_url
from ._sqltypes import sql_string
from ._usage import price_of

RESULT_TABLE = "__aiquery_result"
_FORMATS = {".csv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json", ".ndjson": "json"}


def _sql_argument(args: argparse.Namespace, command: str) -> str:
    if (args.file is None) == (args.execute is None):
        raise SystemExit(f"aiquery {command}: give a SQL file, - for standard input, or -e 'SQL' (one of them)")
    if args.execute is not None:
        return args.execute
    return sys.stdin.read() if args.file == "-" else Path(args.file).read_text()


def _run(args: argparse.Namespace) -> int:
    sql = _sql_argument(args, "run")
    output_format = None
    if args.output:
        output_format = _FORMATS.get(Path(args.output).suffix.lower())
        if output_format is None:
            raise SystemExit(f"aiquery run: --output must end in {', '.join(_FORMATS)}, got {args.output!r}")
    # A progress line per query that calls a model (aiquery/_progress.py).
    con = connect(args.db, config=args.config, progress=interactive() if args.progress is None else args.progress)
    try:
        statements = _script.statements(con, sql, args.dialect)
        if not statements:
            raise SystemExit("aiquery run: no SQL statement given")
        has_result = False
        for statement in statements:
            if statement.type == duckdb.StatementType.SELECT:
                _script.run(lambda q: con.execute(f"CREATE OR REPLACE TEMP TABLE {RESULT_TABLE} AS {q}"),
                            statement, sql, args.dialect)
                has_result = True
            else:
                _script.run(con.execute, statement, sql, args.dialect)
            registration_of(con).settle_displays()  # its progress line is closed before anything is printed
            if statement.type == duckdb.StatementType.SELECT and not output_format:
                print(con.table(RESULT_TABLE))
        if not has_result:
            print("ok")
        elif output_format:
            con.execute(f"COPY {RESULT_TABLE} TO {sql_string(args.output)} (FORMAT {output_format})")
            rows = con.execute(f"SELECT count(*) FROM {RESULT_TABLE}").fetchall()[0][0]
            print(f"wrote {rows:,} rows to {args.output}")
    finally:
        con.close()
    return 0


def _explain(args: argparse.Namespace) -> int:
    sql = _sql_argument(args, "explain")
    con = connect(args.db, config=args.config, progress=False)
    try:
        if dialect_name(args.dialect) != "duckdb":
            sql = translate(sql, args.dialect, catalogs=_script.catalogs(con))
        for number, plan in enumerate(explain(con, sql), 1):
            print(f"statement {number}: {plan}")
    finally:
        con.close()
    return 0


def _estimate(args: argparse.Namespace) -> int:
    sql = _sql_argument(args, "estimate")
    con = connect(args.db, config=args.config)
    try:
        if dialect_name(args.dialect) != "duckdb":
            estimates = estimate(con, translate(sql, args.dialect, catalogs=_script.catalogs(con)))
        else:
            try:
                estimates = estimate(con, sql)
            except duckdb.Error as exc:
                raise with_hint(exc, sql) from None
    finally:
        con.close()
    if not estimates:
        print("no ai_query call would send a request")
        return 0
    table = [("endpoint", "model", "rows", "distinct", "cached", "requests", "batched", "prompt tokens",
              "cached tokens", "completion tokens", "cost (USD)", "time")]
    for e in estimates:
        table.append((e.endpoint, e.model or "", f"{e.rows:,}", f"{e.distinct_requests:,}", f"{e.cache_hits:,}",
                      f"{e.requests_to_send:,}", f"{e.batched:,}", f"{e.prompt_tokens:,}", f"{e.cached_tokens:,}",
                      "?" if e.completion_tokens is None else f"{e.completion_tokens:,}",
                      "?" if e.cost_usd is None else f"{e.cost_usd:,.4f}", f"{e.seconds:,.0f} s"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    for e in estimates:
        notes = [f"tokens: {e.token_count}", f"time: {e.time_basis}"]
        if e.cost_covers:
            notes.append(f"cost covers {e.cost_covers}")
        elif e.cost_usd is None:
            notes.append(f"no price for {e.model!r}: add [prices.\"{e.model}\"] to aiquery.toml")
        print(f"{e.endpoint}: " + "; ".join(notes))
        for plan in e.plans:
            print(f"{e.endpoint}: plan of {plan}")
    return 0


def endpoint_rows(endpoints: dict) -> list[tuple]:
    """A header and one row per endpoint: name, task, provider, model, URL, where its settings came from."""
    rows = [("name", "task", "provider", "model", "url", "settings from")]
    for name, e in sorted(endpoints.items()):
        if e.provider == "local":
            url = f"local://{e.model} (in this process)"
        elif e.provider == "databricks":
            url = safe_url(e.host) if e.host else "$DATABRICKS_HOST"
        else:
            url = safe_url(e.base_url or OPENAI_BASE_URL)
        rows.append((name, e.task, e.provider, e.model or "", url, e.source))
    return rows


def print_table(rows: list[tuple], file=None) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip(), file=file)


def _endpoints(args: argparse.Namespace) -> int:
    endpoints = read_settings(args.config).endpoints
    if not endpoints:
        print("no endpoints: add [endpoints.NAME] tables to aiquery.toml (or the file named by AIQUERY_CONFIG)")
        return 0
    print_table(endpoint_rows(endpoints))
    return 0


def _shell(args: argparse.Namespace) -> int:
    if not sys.stdin.isatty():  # piped SQL, as duckdb runs it: the same as aiquery run -
        args.file, args.execute, args.output = "-", None, None
        return _run(args)
    # A progress line per query that calls a model (aiquery/_progress.py).
    con = connect(args.db, config=args.config, progress=interactive() if args.progress is None else args.progress)
    try:
        Shell(con, dialect=args.dialect).loop()
    finally:
        con.close()
    return 0


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _age(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' in seconds."""
    unit = _AGE_UNITS.get(text[-1:].lower())
    try:
        value = float(text[:-1])
    except ValueError:
        unit = None
    if unit is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30m, 12h or 7d")
    return value * unit


def _cache(args: argparse.Namespace) -> int:
    path = Path(args.path).expanduser().resolve() if args.path else default_path().resolve()
    if args.action == "repair":
        done = rebuild(path, keep_answers=True)
        print(f"repaired {path}: kept {done.kept:,} answers" + (
            f"; part of the old file could not be read, and it is now {done.aside} (delete it when you no "
            "longer need it)" if done.aside else ""))
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # a problem is this command's error, said once below
        cache = open_cache(path)
        try:
            if cache.problem is not None:
                raise ConfigError(cache.problem)
            if args.action == "clear":
                deleted = cache.clear(endpoint=args.endpoint, older_than=args.older_than)
                print(f"deleted {deleted:,} cached answers from {cache.path}")
                return 0
            rows = cache.summary()
        except ConfigError:
            if args.action != "clear" or args.endpoint or args.older_than is not None or not cache.rebuildable:
                raise
            done = rebuild(path, keep_answers=False)  # everything goes: nothing to pick out of the damaged file
            print(f"deleted all cached answers from {path}: the damaged file was replaced by an empty cache"
                  + (f" (it could not be read, and is now {done.aside})" if done.aside else ""))
            return 0
    size = sum(p.stat().st_size for p in cache.path.parent.glob(cache.path.name + "*") if p.is_file())
    print(f"{cache.path}: {size / 1e6:,.1f} MB, {sum(r[2] for r in rows):,} answers, "
          f"{sum(r[4] for r in rows):,} hits")
    table = [("endpoint", "model", "answers", "MB", "hits")]
    table += [(e, m or "", f"{n:,}", f"{b / 1e6:,.2f}", f"{h:,}") for e, m, n, b, h in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table if rows else []:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _batches(args: argparse.Namespace) -> int:
    store = BatchStore(store_path(Path(args.path).expanduser() if args.path else None))
    try:
        rows = store.rows()
        settings = read_settings(args.config)
        endpoints = settings.endpoints
        if args.action == "cancel":
            if args.id is None:
                raise SystemExit("aiquery batches cancel: give the batch id (see aiquery batches)")
            row = store.get(args.id)
            if row is None or row["batch_id"] is None:
                raise SystemExit(f"aiquery batches cancel: no submitted batch {args.id!r} in {store.path}")
            notes = asyncio.run(refresh(store, [row], endpoints, cancel=True))
            if notes:
                print(*notes, sep="\n", file=sys.stderr)
                return 1
            print(f"cancelling {row['batch_id']}: rows done so far stay answered; "
                  "run the statement again to send the others")
            return 0
        shown = rows if args.all else [row for row in rows if not row["collected"]]
        notes = asyncio.run(refresh(store, [r for r in shown if not r["collected"] and r["batch_id"]], endpoints))
        shown = [store.get(row["id"]) for row in shown]
        if not shown:
            print(f"no pending batches in {store.path}" + ("" if args.all else " (--all lists finished ones too)"))
            return 0
        table = [("batch", "endpoint", "model", "status", "done", "failed", "tokens", "cost so far (USD)", "age")]
        for r in shown:
            cost = batch_cost(r, price_of(r["model"], settings.prices))
            table.append((r["batch_id"] or f"(not created: {r['id'][:8]})", r["endpoint"], r["model"] or "",
                          r["status"] + ("" if r["collected"] or r["status"] in TERMINAL else " (pending)"),
                          f"{r['completed'] + r['failed']:,}/{r['requests']:,}", f"{r['failed']:,}",
                          f"{r['prompt_tokens'] + r['completion_tokens']:,}",
                          "?" if cost is None else f"{cost:,.4f}", _duration(time.time() - r["created"])))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        for note in notes:
            print(note)
        return 0
    finally:
        store.close()


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


_CONFIG_HELP = "the settings file (default: the file named by $AIQUERY_CONFIG, else ./aiquery.toml if present)"
_DIALECT_HELP = "the SQL's dialect: duckdb (default) or databricks (translated to DuckDB first)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiquery", description="Databricks-style ai_query() for DuckDB. "
                                     "With no command: an interactive SQL shell (aiquery shell).")
    commands = parser.add_subparsers(dest="command", required=True)
    shell = commands.add_parser("shell", help="an interactive SQL shell with every aiquery function (the default)")
    shell.add_argument("db", nargs="?", default=":memory:", help="a DuckDB database file (default: in memory)")
    shell.add_argument("--config", help=_CONFIG_HELP)
    shell.add_argument("--dialect", default="duckdb", help=_DIALECT_HELP)
    shell.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show progress while a statement runs (default: only on a terminal)")
    shell.set_defaults(handler=_shell)
    run = commands.add_parser("run", help="run SQL with every aiquery function registered")
    run.add_argument("file", nargs="?", help="a SQL file (statements separated by ;), or - for standard input")
    run.add_argument("-e", "--execute", metavar="SQL", help="SQL to run instead of a file")
    run.add_argument("--db", default=":memory:", help="a DuckDB database file (default: in memory)")
    run.add_argument("--config", help=_CONFIG_HELP)
    run.add_argument("--output", metavar="PATH", help="write the last result to .csv, .parquet or .json")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show progress while a statement runs (default: only on a terminal)")
    run.add_argument("--dialect", default="duckdb", help=_DIALECT_HELP)
    run.set_defaults(handler=_run)
    for name, handler, help_text, verb in (
            ("estimate", _estimate, "what SQL would send and cost, without calling any model", "estimate"),
            ("explain", _explain, "which ai_query calls are read ahead, and why not; no model called", "explain")):
        looking = commands.add_parser(name, help=help_text)
        looking.add_argument("file", nargs="?", help="a SQL file (statements separated by ;)")
        looking.add_argument("-e", "--execute", metavar="SQL", help=f"SQL to {verb} instead of a file")
        looking.add_argument("--db", default=":memory:", help="a DuckDB database file (default: in memory)")
        looking.add_argument("--config", help=_CONFIG_HELP)
        looking.add_argument("--dialect", default="duckdb", help=_DIALECT_HELP)
        looking.set_defaults(handler=handler)
    listing = commands.add_parser("endpoints", help="list endpoints with their task and where their settings came from")
    listing.add_argument("--config", help=_CONFIG_HELP)
    listing.set_defaults(handler=_endpoints)
    caching = commands.add_parser("cache", help="show the response cache, clear it (all, one endpoint, by age), "
                                                "or repair a damaged one")
    caching.add_argument("action", nargs="?", choices=("info", "clear", "repair"), default="info",
                         help="repair: a new file with the answers the old one still has readable")
    caching.add_argument("--endpoint", help="clear only this endpoint's answers")
    caching.add_argument("--older-than", type=_age, metavar="AGE", help="clear answers older than AGE (30m, 12h, 7d)")
    caching.add_argument("--path", help="the cache file (default: responses.sqlite3 in $AIQUERY_CACHE_DIR "
                                        "or the user cache directory)")
    caching.set_defaults(handler=_cache)
    batching = commands.add_parser("batches", help="batch mode: pending batches, their progress and cost so far; "
                                                   "or cancel one")
    batching.add_argument("action", nargs="?", choices=("list", "cancel"), default="list")
    batching.add_argument("id", nargs="?", help="the batch to cancel (its id as listed)")
    batching.add_argument("--all", action="store_true", help="list finished batches too")
    batching.add_argument("--config", help=_CONFIG_HELP)
    batching.add_argument("--path", help="the response cache file the batches belong to (default: "
                                         "responses.sqlite3 in $AIQUERY_CACHE_DIR or the user cache directory)")
    batching.set_defaults(handler=_batches)


    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0] not in commands.choices and argv[0] not in ("-h", "--help")):
        argv = ["shell", *argv]  # `aiquery`, `aiquery data.duckdb`: the shell, as `duckdb` opens one
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (AIQueryError, duckdb.Error, OSError) as exc:
        print(f"aiquery: {printable(str(exc))}", file=sys.stderr)  # no terminal controls a server sent
        return 1


if __name__ == "__main__":
    sys.exit(main())
