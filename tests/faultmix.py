"""The fault mix that tests/test_faults.py and the `faults` benchmark (benchmarks/run.py) send.

Row i gets the fault of bucket hash(i) % BUCKETS (DuckDB's hash, computed in the SQL itself), as a
fakeserver.py directive appended to its prompt `row i`. Out of BUCKETS = 2,000 buckets:

    kind                 buckets  share  directive                                  attempts to answer
    429                      150   7.5%  [[status=429 times=1 retry_after=0.05]]    2
    429 twice                 50   2.5%  [[status=429 times=2 retry_after_ms=50]]   3
    500                       30   1.5%  [[status=500 times=1]]                     2
    502 html                  25  1.25%  [[html times=1]]                           2
    503                       20   1.0%  [[status=503 times=1 retry_after=0.05]]    2
    503 html                  15  0.75%  [[html=503 times=1 retry_after=0.05]]      2
    503 permanent              5  0.25%  [[status=503 retry_after=0.05]]            never (error)
    502 html permanent         5  0.25%  [[html]]                                   never (error)
    reset                     20   1.0%  [[reset times=1]]                          2
    timeout                   20   1.0%  [[sleep=S times=1]], S > the timeout       2
    malformed                 10   0.5%  [[malformed times=1]]                      2
    nofields                  10   0.5%  [[nofields times=1]]                       never: not retried (error)
    none                    1640  82.0%  (nothing)                                  1

So 10% 429 with Retry-After, 5% 5xx (a tenth of them permanent), 1% connection resets, 1% slower
than the endpoint's timeout, 0.5% truncated JSON and 0.5% a 200 without `choices`. aiquery retries
429, 5xx, timeouts and connection errors (aiquery/_retry.py), and a 2xx whose body is empty or not
JSON (aiquery/_wire.py). It does not retry a 2xx that is JSON without the answer's fields: that row
gets its error after one request, even though this server would answer it the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BUCKETS = 2_000


@dataclass(frozen=True)
class Fault:
    kind: str
    buckets: int          # of BUCKETS
    directive: str        # appended to the row's prompt (with a space before it)
    faulted: int | None   # requests of the row the server answers with the fault (None: every one)
    retried: bool = True  # whether aiquery tries again after this fault
    status: int | None = None  # for a row that ends in an error: the status its error names
    says: str = ""        # ... and what its error says; {url} stands for the server's URL

    @property
    def fails(self) -> bool:
        """Whether the row ends with an error instead of its answer."""
        return self.faulted is None or not self.retried


def fault_mix(slow_s: float) -> list[Fault]:
    """The mix; the `timeout` rows sleep `slow_s` seconds on their first arrival (make it longer than
    the endpoint's timeout)."""
    return [
        Fault("429", 150, "[[status=429 times=1 retry_after=0.05]]", 1),
        Fault("429 twice", 50, "[[status=429 times=2 retry_after_ms=50]]", 2),
        Fault("500", 30, "[[status=500 times=1]]", 1),
        Fault("502 html", 25, "[[html times=1]]", 1),
        Fault("503", 20, "[[status=503 times=1 retry_after=0.05]]", 1),
        Fault("503 html", 15, "[[html=503 times=1 retry_after=0.05]]", 1),
        Fault("503 permanent", 5, "[[status=503 retry_after=0.05]]", None, status=503,
              says="HTTP 503 Service Unavailable from {url}/v1/chat/completions: fake error 503"),
        Fault("502 html permanent", 5, "[[html]]", None, status=502,
              says="HTTP 502 Bad Gateway from {url}/v1/chat/completions: 502 Bad Gateway"),
        Fault("reset", 20, "[[reset times=1]]", 1),
        Fault("timeout", 20, f"[[sleep={slow_s:g} times=1]]", 1),
        Fault("malformed", 10, "[[malformed times=1]]", 1),
        Fault("nofields", 10, "[[nofields times=1]]", 1, retried=False, status=200,
              says='answered 200 without choices: {"object": "chat.completion"}'),
    ]


def _case(mix: list[Fault], column: str, value: Callable[[Fault], str], default: str) -> str:
    whens, start = [], 0
    for fault in mix:
        start += fault.buckets
        whens.append(f"WHEN hash({column}) % {BUCKETS} < {start} THEN {value(fault)}")
    assert start <= BUCKETS
    return f"CASE {' '.join(whens)} ELSE {default} END"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def kind_sql(mix: list[Fault], column: str = "i") -> str:
    """SQL for the kind of fault of row `column` ('none' for a row without one)."""
    return _case(mix, column, lambda f: _quote(f.kind), "'none'")


def directive_sql(mix: list[Fault], column: str = "i") -> str:
    """SQL for the text appended to row `column`'s prompt: ' [[...]]', or '' for a row without a fault."""
    return _case(mix, column, lambda f: _quote(" " + f.directive), "''")


def fails_sql(mix: list[Fault], column: str = "i") -> str:
    """SQL: whether row `column` ends with an error."""
    return _case(mix, column, lambda f: "true" if f.fails else "false", "false")
