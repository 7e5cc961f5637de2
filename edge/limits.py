"""Per-serving and per-key limits: requests/minute, tokens/minute and concurrent requests.

Kept in this edge process: with several edge replicas each enforces the limits on its own
share of traffic.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from services.common.errors import ResourceExhausted
from services.common.records import Limits

WINDOW_S = 60.0


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
class _Subject:
    requests: _Meter = field(default_factory=_Meter)
    tokens: _Meter = field(default_factory=_Meter)


class Permit:
    """Held for the duration of a request; `finish` records its tokens and frees its slot."""

    def __init__(self, subjects: list[_Subject]):
        self._subjects = subjects
        self._open = True

    def finish(self, tokens: int) -> None:
        if not self._open:
            return
        self._open = False
        now = time.monotonic()
        for subject in self._subjects:
            subject.requests.in_flight -= 1
            if tokens:
                subject.tokens.events.append((now, tokens))
                subject.tokens.total += tokens


class RateLimiter:
    def __init__(self) -> None:
        self._subjects: dict[str, _Subject] = collections.defaultdict(_Subject)

    def acquire(self, limits: Limits, serving_id: int, key_id: str | None) -> Permit:
        """Admits a request or raises ResourceExhausted with the seconds to wait."""
        now = time.monotonic()
        checks = [
            (
                f"serving:{serving_id}",
                "serving",
                limits.requests_per_minute,
                limits.tokens_per_minute,
                limits.max_concurrent_requests,
            )
        ]
        if key_id:
            checks.append(
                (
                    f"key:{key_id}",
                    "API key",
                    limits.key_requests_per_minute,
                    limits.key_tokens_per_minute,
                    limits.key_max_concurrent_requests,
                )
            )
        subjects = []
        for name, label, rpm, tpm, concurrent in checks:
            subject = self._subjects[name]
            subject.requests.expire(now)
            subject.tokens.expire(now)
            if concurrent and subject.requests.in_flight >= concurrent:
                raise ResourceExhausted(
                    f"Too many concurrent requests for this {label} (limit {concurrent}).",
                    code="rate_limit_exceeded",
                    retry_after_s=1.0,
                )
            if rpm and subject.requests.total >= rpm:
                raise ResourceExhausted(
                    f"Rate limit reached for this {label}: {rpm} requests per minute.",
                    code="rate_limit_exceeded",
                    retry_after_s=subject.requests.retry_after(now),
                )
            if tpm and subject.tokens.total >= tpm:
                raise ResourceExhausted(
                    f"Rate limit reached for this {label}: {tpm} tokens per minute.",
                    code="rate_limit_exceeded",
                    retry_after_s=subject.tokens.retry_after(now),
                )
            subjects.append(subject)
        for subject in subjects:
            subject.requests.events.append((now, 1))
            subject.requests.total += 1
            subject.requests.in_flight += 1
        return Permit(subjects)
