"""How many requests an endpoint gets at once, and how many per minute.

Concurrency adapts to the server (AIMD with a slow start): it starts at `SLOW_START` in flight (or
max_concurrency if lower) and grows by one per success until the server shows its limit. A 429
that comes from sending too many sets the limit to the number of requests sent before the
rejected one and still out: rejections come back fast, so those are the ones the server accepted,
which is its capacity. That happens at most once per round of requests sent at the previous
limit. After it, each success adds PROBE/limit, so the limit creeps up and finds out, now and
then, whether the server takes one more. It never exceeds max_concurrency.
Not every 429 means "too many at once": a per-key rate limit or a gateway shedding load refuses a
share of requests whatever the number in flight, and cutting the limit on those would collapse it
(AIMD under random loss). So a 429 lowers the limit only when 429s are more frequent among
requests sent with many in flight than among those sent with fewer, or when they come in a row.
Requests- and tokens-per-minute limits are leaky buckets (aiolimiter); tokens are estimated
before sending (prompt characters / 4 + max_tokens) since the real count is known only after.
One EndpointLimits is shared by every query and connection that uses the same endpoint.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

SLOW_START = 64  # requests in flight before the server has shown its limit
PROBE = 0.25     # after a 429, one more slot per four round trips of successes
WINDOW = 256     # recent answers (successes and 429s) the share of 429s is measured over
EVIDENCE = 32    # answers needed before a share of 429s counts
RUN = 4          # before that share is known, this many 429s in a row (in sending order) mean the server is full
SHALLOW = 0.8    # requests sent with fewer than this share of the 429's depth in flight are "shallow"


@dataclass(frozen=True)
class Ticket:
    """A slot: its place in sending order, how many were in flight when it was sent, the limit's
    epoch then, and whether it is a retry."""

    seq: int
    depth: int
    epoch: int
    retry: bool


def _share(throttled: list[bool]) -> float:
    return sum(throttled) / len(throttled)


class AdaptiveLimit:
    """An in-flight limit between 1 and `ceiling`, lowered by 429s that come from being too many
    and raised by successes."""

    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.limit = float(min(ceiling, SLOW_START))
        self.slow_start = ceiling > SLOW_START
        self.epoch = 0  # bumped by each decrease; a 429 from an older epoch does not decrease again
        self.background: float | None = None  # share of 429s whatever the number in flight
        self._sent = itertools.count()
        self._out: set[int] = set()  # seqs of the requests in flight
        self._recent: deque[tuple[int, bool]] = deque(maxlen=WINDOW)  # (depth, throttled), in sending order
        self._finished: dict[int, tuple[int, bool] | None] = {}  # outcomes waiting for an older request
        self._unsettled = 0  # the oldest seq whose outcome is not in _recent yet
        self._refused: deque[int] = deque(maxlen=RUN * 8)  # seqs of the latest 429s

    @property
    def in_flight(self) -> int:
        return len(self._out)

    def set_ceiling(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = min(self.limit, float(ceiling))

    def start(self, retry: bool = False) -> Ticket:
        """Records a request sent (the caller keeps in_flight under `limit`)."""
        ticket = Ticket(next(self._sent), len(self._out), self.epoch, retry)
        self._out.add(ticket.seq)
        return ticket

    def finish(self, ticket: Ticket, throttled: bool, failed: bool) -> None:
        """A 429 from being too many lowers the limit, a success raises it, other failures leave it."""
        self._out.discard(ticket.seq)
        # A retry's fate depends on the first try's (a row the server refuses once), and only 429s
        # and successes tell about the server's limit.
        counts = not ticket.retry and (throttled or not failed)
        self._settle(ticket.seq, (ticket.depth, throttled) if counts else None)
        if not throttled:
            if not failed:
                step = 1 if self.slow_start else PROBE / self.limit
                self.limit = min(float(self.ceiling), self.limit + step)
            return
        self._refused.append(ticket.seq)
        if ticket.epoch == self.epoch and self._too_many(ticket):
            accepted = sum(1 for seq in self._out if seq < ticket.seq)
            self.limit = float(max(1, min(int(self.limit), accepted)))
            self.slow_start = False
            self.epoch += 1

    def _settle(self, seq: int, outcome: tuple[int, bool] | None) -> None:
        """Adds outcomes to the recent ones in sending order. In the order they arrive, the recent
        window would hold the 429s of older requests (which come back at once) without their
        successes (which take the server's latency), or the reverse, biasing the comparison."""
        self._finished[seq] = outcome
        while self._unsettled in self._finished:
            settled = self._finished.pop(self._unsettled)
            if settled is not None:
                self._recent.append(settled)
            self._unsettled += 1

    def _too_many(self, ticket: Ticket) -> bool:
        """Whether 429s come from sending too many at once: whether they are more frequent among
        requests sent with about `depth` or more in flight than among those sent with fewer. A
        server that refuses a share of requests whatever the load (a per-key rate limit, a gateway
        shedding at random) shows the same share at every depth, and lowering the limit would only
        slow everything down. When the recent requests were all sent at about the same depth, their
        share is compared with the background share of the last comparison (none: any 429 is the
        server's limit)."""
        depth = ticket.depth
        shallow = [t for d, t in self._recent if d < SHALLOW * depth]
        deep = [t for d, t in self._recent if d >= SHALLOW * depth]
        if len(shallow) >= EVIDENCE and len(deep) >= EVIDENCE:
            self.background = _share(shallow)
            return self.background == 0 or _clearly_more(deep, self.background, len(shallow))
        if self.background is None and all(ticket.seq - n in self._refused for n in range(1, RUN)):
            self.background = 0.0  # refused in a row: the server is full, not refusing at random
        if self.background is None:
            return False
        recent = [t for _, t in self._recent][-2 * EVIDENCE:]  # sent at about the same depth
        return self.background == 0 or _clearly_more(recent, self.background, EVIDENCE)


def _clearly_more(deep: list[bool], background: float, measured_on: int) -> bool:
    """Whether the share of 429s in `deep` is more than twice the `background` share (measured on
    `measured_on` requests), and by more than chance would give (two standard errors)."""
    share = _share(deep)
    pooled = (sum(deep) + background * measured_on) / (len(deep) + measured_on)
    error = math.sqrt(pooled * (1 - pooled) * (1 / len(deep) + 1 / measured_on))
    return share > 2 * background and share - background > 2 * error


@dataclass
class EndpointLimits:
    """Every limit of one endpoint. Lives on the engine's loop."""

    concurrency: AdaptiveLimit
    requests_per_minute: AsyncLimiter | None = None
    tokens_per_minute: AsyncLimiter | None = None

    @classmethod
    def create(cls, max_concurrency: int, rpm: int | None, tpm: int | None) -> "EndpointLimits":
        limits = cls(AdaptiveLimit(max_concurrency))
        limits.configure(max_concurrency, rpm, tpm)
        return limits

    def configure(self, max_concurrency: int, rpm: int | None, tpm: int | None) -> None:
        """The latest registration's settings win; the adaptive state is kept."""
        self.concurrency.set_ceiling(max_concurrency)
        if rpm is None:
            self.requests_per_minute = None
        elif self.requests_per_minute is None or self.requests_per_minute.max_rate != rpm:
            self.requests_per_minute = AsyncLimiter(rpm, 60)
        if tpm is None:
            self.tokens_per_minute = None
        elif self.tokens_per_minute is None or self.tokens_per_minute.max_rate != tpm:
            self.tokens_per_minute = AsyncLimiter(tpm, 60)

    async def admit(self, estimated_tokens: int) -> None:
        """Waits until the per-minute limits allow one more request of this size."""
        if self.requests_per_minute is not None:
            await self.requests_per_minute.acquire()
        if self.tokens_per_minute is not None:
            await self.tokens_per_minute.acquire(min(estimated_tokens, self.tokens_per_minute.max_rate))


def estimate_tokens(body: dict) -> int:
    """A pre-flight token estimate: about 4 characters per token, plus what the answer may use."""
    text_chars = sum(len(str(v)) for k, v in body.items() if k in ("messages", "prompt", "input"))
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return max(1, text_chars // 4 + (max_tokens if isinstance(max_tokens, int) else 0))
