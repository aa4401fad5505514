"""How many requests an endpoint gets at once, and how many per minute.

Concurrency adapts to the server (AIMD with a slow start): it starts at `SLOW_START` in flight (or
max_concurrency if lower) and grows by one per success until the first 429, so a server with a
lower limit than we were told sees few rejections. A 429 sets the limit to the number of requests
sent before the rejected one and still out: rejections come back fast, so those are the ones the
server accepted, which is its capacity. That happens at most once per round of requests sent at
the previous limit. After it, each success adds PROBE/limit, so the limit creeps up and finds
out, now and then, whether the server takes one more. It never exceeds max_concurrency.
Requests- and tokens-per-minute limits are leaky buckets (aiolimiter); tokens are estimated
before sending (prompt characters / 4 + max_tokens) since the real count is known only after.
One EndpointLimits is shared by every query and connection that uses the same endpoint.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

SLOW_START = 64  # requests in flight before the server has shown its limit
PROBE = 0.25     # after a 429, one more slot per four round trips of successes


@dataclass(frozen=True)
class Ticket:
    """A slot: its place in sending order and the limit's epoch when it was sent."""

    seq: int
    epoch: int


class AdaptiveLimit:
    """An in-flight limit between 1 and `ceiling`, lowered by 429s and raised by successes."""

    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.limit = float(min(ceiling, SLOW_START))
        self.slow_start = ceiling > SLOW_START
        self.epoch = 0  # bumped by each decrease; a 429 from an older epoch does not decrease again
        self._sent = itertools.count()
        self._out: set[int] = set()  # seqs of the requests in flight

    @property
    def in_flight(self) -> int:
        return len(self._out)

    def set_ceiling(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = min(self.limit, float(ceiling))

    def start(self) -> Ticket:
        """Records a request sent (the caller keeps in_flight under `limit`)."""
        ticket = Ticket(next(self._sent), self.epoch)
        self._out.add(ticket.seq)
        return ticket

    def finish(self, ticket: Ticket, throttled: bool, failed: bool) -> None:
        """A 429 lowers the limit, a success raises it, other failures leave it."""
        self._out.discard(ticket.seq)
        if throttled:
            if ticket.epoch == self.epoch:
                accepted = sum(1 for seq in self._out if seq < ticket.seq)
                self.limit = float(max(1, min(int(self.limit), accepted)))
                self.slow_start = False
                self.epoch += 1
        elif not failed:
            step = 1 if self.slow_start else PROBE / self.limit
            self.limit = min(float(self.ceiling), self.limit + step)


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
