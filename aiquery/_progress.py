"""Progress while a query runs: answers, rate, requests, retries, errors, tokens (cached ones among
them), rows answered through a batch API, and cost so far.

tqdm draws it (a text line in a terminal; in Jupyter a widget when ipywidgets is installed, else a
text line), only after the query has run for a second, and only where someone is watching: a
terminal or a notebook, unless asked for explicitly (`aiquery.connect(progress=True)`, the CLI's
--progress) or turned off (progress=False, AIQUERY_PROGRESS=0). The figures are read twice a second
by a thread of its own, so the query never waits on the display.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import IO

from tqdm.auto import tqdm

from ._usage import Price, Usage

REFRESH = 0.5  # seconds between updates


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
            "errors": sum(u.errors for u, _ in usages),
            "tokens": sum(u.prompt_tokens + u.completion_tokens for u, _ in usages),
            "cached_tokens": sum(u.cached_tokens for u, _ in usages), "batched": sum(u.batched for u, _ in usages),
            "cost": None if any(c is None for c in costs) else sum(costs)}


class Progress:
    """Shows `figures()` (see totals()) until the block ends or `done()` is true."""

    def __init__(self, figures: Callable[[], dict], *, label: str = "ai_query", file: IO[str] | None = None,
                 done: Callable[[], bool] | None = None) -> None:
        self._figures, self._label, self._file, self._done = figures, label, file or sys.stderr, done
        self._stop = threading.Event()
        self._start = figures()
        self._bar = tqdm(desc=label, unit=" answers", file=self._file, delay=1.0, dynamic_ncols=True)
        self._thread = threading.Thread(target=self._run, name="aiquery-progress", daemon=True)
        self._thread.start()

    def _update(self) -> None:
        now = self._figures()
        delta = {k: (v - self._start[k]) if v is not None and self._start[k] is not None else None
                 for k, v in now.items()}
        self._bar.update(delta["answers"] - self._bar.n)
        cost = "" if delta["cost"] is None else f" cost=${delta['cost']:.4f}"
        cached = f" cached={delta['cached_tokens']}" if delta["cached_tokens"] else ""
        batched = f" batched={delta['batched']}" if delta["batched"] else ""
        self._bar.set_postfix_str(f"requests={delta['requests']} retries={delta['retries']} "
                                  f"errors={delta['errors']} tokens={delta['tokens']}{cached}{batched}{cost}",
                                  refresh=False)

    def _run(self) -> None:
        while not self._stop.wait(REFRESH):
            self._update()
            if self._done is not None and self._done():
                self._close()
                return

    def _close(self) -> None:
        self._update()
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
