"""Runs tests/fakeserver.py's FakeServer in a process of its own, driven over stdin/stdout.

Started by servers.FakeServerProcess, never by hand. It prints one JSON line {"port": N} once
listening, then answers each command line on stdin with one JSON line:
    stats   what was received since the last reset (see `stats()`)
    reset   forget the requests, the peak and the timings
End of stdin stops the server and the process.
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakeserver import FakeServer  # noqa: E402

import workloads  # noqa: E402

# The handler task's slot for the latency it planned: the latency callable and _handle run in the
# same aiohttp task, so a context variable pairs them without a lock or a lookup.
_PLANNED: contextvars.ContextVar[list] = contextvars.ContextVar("planned")


class TimedFakeServer(FakeServer):
    """A FakeServer that also records each answered request's planned latency and its lag.

    Lag is the time from choosing the latency (the body is read by then) to the handler's return,
    minus that latency: near zero while the server keeps up, growing when its event loop is
    saturated (then the server, not the client, is slow). It leaves out reading the request, which
    a slow client can stretch on its own.
    """

    def __init__(self, latency_spec: dict, **options):
        model = workloads.latency_model(latency_spec)

        def latency(body: dict) -> float:
            seconds = model(body)
            slot = _PLANNED.get(None)
            if slot is not None:
                slot.append((workloads.chat_row_id(body), seconds, time.perf_counter()))
            return seconds

        super().__init__(latency=latency, **options)
        self.clear_timings()

    def clear_timings(self) -> None:
        self.lags: list[float] = []
        self.planned: dict[int, float] = {}  # row id -> latency used, for chat rows
        self.cpu_at_reset = time.process_time()

    async def _handle(self, request):
        slot: list = []
        _PLANNED.set(slot)
        response = await super()._handle(request)
        if slot:
            row_id, seconds, chosen_at = slot[0]
            self.lags.append(time.perf_counter() - chosen_at - seconds)
            if row_id is not None:
                self.planned[row_id] = seconds
        return response

    def stats(self) -> dict:
        requests = self.requests
        row_ids = [workloads.chat_row_id(r.body) for r in requests if r.body is not None]
        inputs = [r.body.get("input") for r in requests if r.body is not None and "input" in r.body]
        lags = list(self.lags)
        good = collections.Counter(workloads.chat_row_id(r.body) for r in requests
                                   if r.body is not None and r.status == 200 and r.fault is None)
        return {
            "requests": len(requests),
            "statuses": dict(collections.Counter(str(r.status) for r in requests)),
            # fault directives that shaped answers (fakeserver.Received.fault), and rows given a good answer
            "faults": dict(collections.Counter(r.fault for r in requests if r.fault is not None)),
            "rows_answered": len(good),
            "rows_answered_twice": sum(n > 1 for n in good.values()),
            # seconds requests spent in the server, summed: / the run's time = mean requests in flight
            "busy_seconds": sum((r.answered or time.monotonic()) - r.arrived for r in requests if r.arrived),
            "peak_in_flight": self.peak_in_flight,
            "rows_seen": len({i for i in row_ids if i is not None}),
            "embedding_inputs": sum(len(i) if isinstance(i, list) else 1 for i in inputs),
            "largest_batch": max((len(i) if isinstance(i, list) else 1 for i in inputs), default=0),
            "planned": self.planned,
            "lag_p50": workloads.percentile(lags, 0.50),
            "lag_p99": workloads.percentile(lags, 0.99),
            "cpu_seconds": time.process_time() - self.cpu_at_reset,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", required=True, help="JSON latency spec, see workloads.latency_model")
    parser.add_argument("--max-concurrency", type=int)
    parser.add_argument("--retry-after", default="0")
    parser.add_argument("--embedding-dim", type=int, default=8)
    args = parser.parse_args()
    server = TimedFakeServer(json.loads(args.latency), max_concurrency=args.max_concurrency,
                             retry_after=args.retry_after, embedding_dim=args.embedding_dim)
    with server:
        print(json.dumps({"port": server.port}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                print(json.dumps(server.stats()), flush=True)
            elif command == "reset":
                server.reset()
                server.clear_timings()
                print(json.dumps({"ok": True}), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)


if __name__ == "__main__":
    main()
