"""Per-serving and per-key limits: requests/minute, tokens/minute and concurrent requests.

One interface (`Limiter`, handing out `Permit`s), two counters chosen at startup: this module's
`LocalLimiter` counts in the edge process (the default; each edge replica then enforces the
limits on its own share of traffic), and edge.redis_limits counts in Redis so that every edge
enforces one limit. Both keep a sliding-window log: each admitted request (and each finished
request's tokens) is an event, and a limit counts the events of the last 60 s exactly, so a
limit is never exceeded at a window's edge and Retry-After is when the oldest event leaves it.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Protocol

from services.common.errors import ResourceExhausted
from services.common.records import Limits

WINDOW_S = 60.0


@dataclass(frozen=True)
class Subject:
    """What one set of limits applies to: a serving or an API key (0: no limit)."""

    name: str
    label: str
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent: int


def subjects_of(limits: Limits, serving_id: int, key_id: str | None) -> list[Subject]:
    subjects = [
        Subject(
            f"serving:{serving_id}",
            "serving",
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.max_concurrent_requests,
        )
    ]
    if key_id:
        subjects.append(
            Subject(
                f"key:{key_id}",
                "API key",
                limits.key_requests_per_minute,
                limits.key_tokens_per_minute,
                limits.key_max_concurrent_requests,
            )
        )
    return subjects


def too_many_concurrent(subject: Subject) -> ResourceExhausted:
    return ResourceExhausted(
        f"Too many concurrent requests for this {subject.label} (limit {subject.max_concurrent}).",
        code="rate_limit_exceeded",
        retry_after_s=1.0,
    )


def too_many_requests(subject: Subject, retry_after_s: float) -> ResourceExhausted:
    return ResourceExhausted(
        f"Rate limit reached for this {subject.label}: "
        f"{subject.requests_per_minute} requests per minute.",
        code="rate_limit_exceeded",
        retry_after_s=retry_after_s,
    )


def too_many_tokens(subject: Subject, retry_after_s: float) -> ResourceExhausted:
    return ResourceExhausted(
        f"Rate limit reached for this {subject.label}: "
        f"{subject.tokens_per_minute} tokens per minute.",
        code="rate_limit_exceeded",
        retry_after_s=retry_after_s,
    )


class Permit(Protocol):
    async def finish(self, tokens: int) -> None:
        """Records the request's tokens and frees its concurrency slot (once)."""


class Limiter(Protocol):
    async def acquire(self, limits: Limits, serving_id: int, key_id: str | None) -> Permit:
        """Admits a request or raises ResourceExhausted with the seconds to wait."""

    async def close(self) -> None: ...


@dataclass
class _Meter:
    """Events of the last minute (timestamp, amount) and requests in flight."""

    events: collections.deque = field(default_factory=collections.deque)
    total: int = 0
    in_flight: int = 0

    def expire(self, now: float) -> None:
        while self.events and now - self.events[0][0] >= WINDOW_S:
            self.total -= self.events.popleft()[1]

    def retry_after(self, now: float) -> float:
        return max(0.0, WINDOW_S - (now - self.events[0][0])) if self.events else 1.0


@dataclass
class _Counts:
    requests: _Meter = field(default_factory=_Meter)
    tokens: _Meter = field(default_factory=_Meter)


class LocalPermit:
    def __init__(self, counts: list[_Counts]):
        self._counts = counts
        self._open = True

    async def finish(self, tokens: int) -> None:
        if not self._open:
            return
        self._open = False
        now = time.monotonic()
        for counts in self._counts:
            counts.requests.in_flight -= 1
            if tokens:
                counts.tokens.events.append((now, tokens))
                counts.tokens.total += tokens


class LocalLimiter:
    """Counts in this process (and stands in for Redis while Redis is down)."""

    def __init__(self) -> None:
        self._counts: dict[str, _Counts] = collections.defaultdict(_Counts)

    async def acquire(self, limits: Limits, serving_id: int, key_id: str | None) -> LocalPermit:
        now = time.monotonic()
        admitted = []
        for subject in subjects_of(limits, serving_id, key_id):
            counts = self._counts[subject.name]
            counts.requests.expire(now)
            counts.tokens.expire(now)
            if subject.max_concurrent and counts.requests.in_flight >= subject.max_concurrent:
                raise too_many_concurrent(subject)
            if subject.requests_per_minute and counts.requests.total >= subject.requests_per_minute:
                raise too_many_requests(subject, counts.requests.retry_after(now))
            if subject.tokens_per_minute and counts.tokens.total >= subject.tokens_per_minute:
                raise too_many_tokens(subject, counts.tokens.retry_after(now))
            admitted.append(counts)
        for counts in admitted:
            counts.requests.events.append((now, 1))
            counts.requests.total += 1
            counts.requests.in_flight += 1
        return LocalPermit(admitted)

    async def close(self) -> None:
        pass
