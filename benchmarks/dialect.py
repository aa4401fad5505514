"""How much Databricks SQL runs on aiquery: as written, through sqlglot alone, through aiquery's dialect.

    python benchmarks/dialect.py            # the three counts, and which examples fail where

The examples are tests/databricks_examples.py (the ai_query and AI Functions idioms of Databricks
jobs), each run on a fresh connection against the fake server. One counts as running when it
raises nothing and returns the expected rows, with the request bodies its check expects:
- "verbatim": the text handed to DuckDB as it is;
- "sqlglot alone": sqlglot.transpile(read="databricks", write="duckdb");
- "aiquery dialect": aiquery.sql(con, text, dialect="databricks"), sqlglot plus aiquery's rules.
All three run on aiquery's own ai_query, so the legacy returnType pair, single-column requests and
property order count wherever the SQL reaches DuckDB intact.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import sqlglot

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import aiquery  # noqa: E402
from aiquery import _cache  # noqa: E402
from databricks_examples import DEFAULTS, EXAMPLES, Example, endpoints, setup  # noqa: E402
from fakeserver import FakeServer  # noqa: E402

MODES = ("verbatim", "sqlglot alone", "aiquery dialect")


def _text(example: Example, mode: str, images: Path) -> tuple[str, str | None]:
    sql = example.sql.replace("{images}", str(images))
    if mode == "sqlglot alone":
        return ";\n".join(sqlglot.transpile(sql, read="databricks", write="duckdb")), None
    return sql, ("databricks" if mode == "aiquery dialect" else None)


def run(example: Example, mode: str, server: FakeServer, workdir: Path) -> str | None:
    """None when the example runs in `mode`, else why not."""
    images = workdir / "images"
    images.mkdir(parents=True, exist_ok=True)
    os.environ["AIQUERY_CACHE_DIR"] = str(workdir / "cache")  # each run pays for its own answers
    server.reset()
    with aiquery.connect(endpoints=endpoints(server), **DEFAULTS) as con:
        setup(con, images)
        try:
            text, dialect = _text(example, mode, images)
            relation = aiquery.sql(con, text, dialect=dialect)
            rows = relation.fetchall() if relation is not None else None
        except Exception as exc:  # noqa: BLE001 - any failure is a result here
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    _cache.close_all()
    if example.rows is not None and rows != example.rows:
        return f"rows {rows!r}"
    bodies = server.bodies()
    try:
        if example.check is not None:
            example.check(bodies)
    except AssertionError:
        return "the requests differ"
    if example.requests is not None and len(server.requests) != example.requests:
        return f"{len(server.requests)} requests, not {example.requests}"
    return None


def main() -> None:
    os.environ.setdefault("AIQUERY_PROGRESS", "0")
    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # "Unsupported property": the failures say it
    with FakeServer() as server, tempfile.TemporaryDirectory() as tmp:
        os.environ["DATABRICKS_HOST"], os.environ["DATABRICKS_TOKEN"] = server.url, "dapi-benchmark"
        os.environ["DATABRICKS_CONFIG_FILE"] = str(Path(tmp) / "none")
        failures = {mode: {} for mode in MODES}
        for i, example in enumerate(EXAMPLES):
            for mode in MODES:
                why = run(example, mode, server, Path(tmp) / f"{i}-{MODES.index(mode)}")
                if why is not None:
                    failures[mode][example.name] = why
    total = len(EXAMPLES)
    print("; ".join(f"{mode}: {total - len(failures[mode])} of {total} run" for mode in MODES))
    for mode in MODES:
        for name, why in failures[mode].items():
            print(f"  {mode} fails {name!r}: {why}")


if __name__ == "__main__":
    main()
