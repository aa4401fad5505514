"""A progress line while a statement runs: answers, rate, requests, retries, errors, tokens.

tqdm draws it (a text line in a terminal, a widget in Jupyter when ipywidgets is installed); it
appears only after the statement has run for a second, and only where someone is watching: on
a terminal, or when asked for explicitly. The figures come from the engine's counters, read
twice a second by a thread of its own, so the statement itself never waits on the display.
"""

from __future__ import annotations

import sys
import threading
from typing import IO

from tqdm.auto import tqdm

from ._engine import Engine

REFRESH = 0.5  # seconds between updates


class Progress:
    """Context manager: `with Progress(engine): con.execute(...)`."""

    def __init__(self, engine: Engine, *, enabled: bool | None = None, file: IO[str] | None = None,
                 label: str = "ai_query") -> None:
        self._engine, self._file = engine, file or sys.stderr
        self._enabled = self._file.isatty() if enabled is None else enabled
        self._label = label
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _totals(self) -> tuple[int, ...]:
        stats = list(self._engine.stats().values())
        return (sum(s.answered for s in stats), sum(s.requests for s in stats), sum(s.retries for s in stats),
                sum(s.errors for s in stats), sum(s.prompt_tokens + s.completion_tokens for s in stats))

    def __enter__(self) -> Progress:
        if self._enabled:
            self._start = self._totals()
            self._bar = tqdm(desc=self._label, unit=" answers", file=self._file, delay=1.0, dynamic_ncols=True)
            self._thread = threading.Thread(target=self._run, name="aiquery-progress", daemon=True)
            self._thread.start()
        return self

    def _update(self) -> None:
        answers, requests, retries, errors, tokens = (now - then for now, then in zip(self._totals(), self._start))
        self._bar.update(answers - self._bar.n)
        self._bar.set_postfix_str(f"requests={requests} retries={retries} errors={errors} tokens={tokens}",
                                  refresh=False)

    def _run(self) -> None:
        while not self._stop.wait(REFRESH):
            self._update()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._update()
            self._bar.close()
