"""Progress of a running query: rows done of a total, percentage, time left, and cost so far and projected.

The total is known without calling a model wherever it can be:
* exact, once the read-ahead (aiquery/_readahead.py) has read its query to the end and every call
  of the statement is read ahead: the calls the query will make, counted;
* estimated (shown with "~") while the read-ahead is on its way, from DuckDB's own estimate of how
  far that query is through its sources, or, for a query that is not read ahead, from DuckDB's
  estimate of how far the query itself is, else from the row count of the table it scans;
* unknown otherwise (a source DuckDB cannot measure), and then the line says so and shows no bar.

Time left counts only the rows that need a request: rows answered from the response cache and rows
repeating another row's request are counted apart (cached=, repeats=), so a warm cache does not make
the rest look fast. Cost is what the answers so far cost, and projected to the total.

tqdm draws the line (a text line in a terminal; in Jupyter a widget, with ipywidgets installed),
only after the query has run for a second, and only where someone is watching: a terminal or a
notebook, unless asked for explicitly (`aiquery.connect(progress=True)`, the CLI's --progress) or
turned off (progress=False, AIQUERY_PROGRESS=0). One line per running query. The figures are read
twice a second by a thread of its own, so the query never waits on the display; the same figures
are columns of aiquery_query_usage().
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

from tqdm.auto import tqdm

from ._usage import Price, Usage, price_of

log = logging.getLogger("aiquery")
REFRESH = 0.5  # seconds between updates
MIN_FRACTION = 0.005  # DuckDB's progress below this says too little to extrapolate a total from


def interactive() -> bool:
    """Whether someone is watching: AIQUERY_PROGRESS if set, else a notebook kernel or a terminal."""
    setting = os.environ.get("AIQUERY_PROGRESS")
    if setting is not None:
        return setting.strip().lower() not in ("0", "false", "no", "off", "")
    ipython = sys.modules.get("IPython")  # a notebook: an IPython shell that has a kernel
    if ipython is not None and getattr(ipython.get_ipython(), "kernel", None) is not None:
        return True
    return sys.stderr.isatty()


def totals(usages: Iterable[tuple[Usage, Price | None]]) -> dict[str, float | None]:
    usages = list(usages)
    costs = [u.cost(p) for u, p in usages]
    return {"answers": sum(u.answered + u.cache_hits for u, _ in usages),
            "requests": sum(u.requests for u, _ in usages), "retries": sum(u.retries for u, _ in usages),
            "errors": sum(u.errors for u, _ in usages), "cache_hits": sum(u.cache_hits for u, _ in usages),
            "tokens": sum(u.prompt_tokens + u.completion_tokens for u, _ in usages),
            "cached_tokens": sum(u.cached_tokens for u, _ in usages), "batched": sum(u.batched for u, _ in usages),
            "cost": None if any(c is None for c in costs) else sum(costs)}


def total_rows(query: Any) -> tuple[int | None, bool]:
    """The rows the query will answer, and whether that is an estimate; (None, False) if unknown."""
    if query.prefetcher is not None:
        total, estimated = query.prefetcher.total()
        if total is not None:
            return total, estimated
    if query.source_rows:  # a table scanned whole: DuckDB keeps its row count
        return query.source_rows, True
    # DuckDB's progress is how far its scan is, and the scan hands ai_query the rows it has read (it
    # may have read a chunk more than it handed over: an estimate, low by up to a chunk per thread).
    fraction = query.progress() if query.progress is not None else None
    if fraction is not None and fraction >= MIN_FRACTION and query.rows_seen:
        return round(query.rows_seen / fraction), True
    return None, False


def query_status(query: Any, prices: dict[str, Price], now: float | None = None) -> dict[str, Any]:
    """Where a query stands: the figures of its progress line and of aiquery_query_usage()."""
    figures = totals((u, price_of(model, prices)) for (_, model), u in list(query.usage.items()))
    # Rows answered, those read ahead of DuckDB included: they count once their answer is in.
    done = max(query.rows_done, figures["answers"] + figures["errors"] + query.deduplicated)
    finished = query.ended.is_set()
    total, estimated = (done, False) if finished else total_rows(query)
    total = None if total is None else max(total, done)
    elapsed = max(1e-9, (time.time() if now is None else now) - query.started)
    sent_rows = max(0, done - figures["cache_hits"] - query.deduplicated)  # rows that needed a request
    left = None
    if total is not None and done < total:
        rate = sent_rows / elapsed
        left = (total - done) / rate if rate > 0 else None
    cost = figures["cost"]
    projected = cost * total / done if cost is not None and total is not None and done else cost
    return {**figures, "rows_done": done, "rows_total": total, "rows_total_estimated": estimated,
            "percent": None if not total else min(100.0, 100.0 * done / total), "seconds_left": left,
            "deduplicated": query.deduplicated, "cost_projected": projected}


class Progress:
    """Shows a query's status (query_status) until it ends or close() is called."""

    def __init__(self, status: Callable[[], dict], *, label: str = "ai_query", file: IO[str] | None = None,
                 done: threading.Event | None = None) -> None:
        self._status, self._label, self._file, self._done = status, label, file or sys.stderr, done
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._bar = tqdm(desc=label, unit=" rows", file=self._file, delay=1.0, dynamic_ncols=True,
                         bar_format=self._format(None, False))
        self._thread = threading.Thread(target=self._run, name="aiquery-progress", daemon=True)
        self._thread.start()

    def _format(self, total: int | None, estimated: bool) -> str:
        if total is None:  # no bar that would lie: the count, and that the total is unknown
            return "{desc}: {n_fmt} rows, total unknown [{elapsed}{postfix}]"
        return ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/" + ("~" if estimated else "") +
                "{total_fmt} [{elapsed}{postfix}]")

    def _update(self, final: bool = False) -> None:
        status = self._status()
        total, estimated = status["rows_total"], status["rows_total_estimated"]
        self._bar.bar_format = self._format(total, estimated)
        widget = getattr(self._bar, "container", None)  # tqdm's notebook form: an ipywidgets bar
        if widget is not None and total != self._bar.total and total:
            widget.children[1].max = total
            widget.children[1].layout.width = None
        self._bar.total = total
        self._bar.n = status["rows_done"]
        left = status["seconds_left"]
        unfinished = total is not None and status["rows_done"] < total
        parts = [(f"left {tqdm.format_interval(left)}" if left is not None else "left ?") if unfinished else "",
                 f"requests={status['requests']}", f"cached={status['cache_hits']}",
                 f"repeats={status['deduplicated']}", f"retries={status['retries']}", f"errors={status['errors']}",
                 f"tokens={status['tokens']}"]
        if status["cached_tokens"]:
            parts.append(f"cached_tokens={status['cached_tokens']}")
        if status["batched"]:
            parts.append(f"batched={status['batched']}")
        if status["cost"] is not None:
            projected = status["cost_projected"]
            parts.append(f"${status['cost']:.4f}" + (f" of ~${projected:.4f}" if projected is not None and total
                                                     and status["rows_done"] < total else ""))
        self._bar.set_postfix_str(" ".join(p for p in parts if p), refresh=False)
        shown = self._bar.last_print_t > self._bar.start_t or widget is not None
        if (final and shown) or time.monotonic() - self._started >= self._bar.delay:  # tqdm's delay: nothing before
            self._bar.refresh()
            self._bar.last_print_t = self._bar._time()  # shown: close() then ends the line

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the display must never fail the query; say why it stopped
            log.warning("aiquery: the progress line stopped", exc_info=True)

    def _loop(self) -> None:
        while True:
            ended = self._done.wait(REFRESH) if self._done is not None else False
            if self._stop.is_set():
                return  # close() draws the last state
            if ended:
                self._close()
                return
            self._update()

    def wait(self, timeout: float) -> None:
        """Returns once the line is closed (its query ended), or after `timeout` seconds."""
        self._thread.join(timeout)

    def _close(self) -> None:
        self._update(final=True)
        self._bar.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
