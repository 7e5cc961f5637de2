"""Content moderation: a policy flags text; a guard applies it to streamed output.

The default policy is a term list. Anything with `flags(text) -> bool` and `max_match_chars`
can stand in for it, e.g. a classifier model behind a service call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol


class Moderator(Protocol):
    # Longest text one flag can span; the guard holds back this much of a stream's tail.
    max_match_chars: int

    def find(self, text: str) -> tuple[int, int] | None:
        """(start, end) of the first flagged span, or None."""


class TermListModerator:
    """Flags case-insensitive whole-word (or whole-phrase) occurrences of any term."""

    def __init__(self, terms: Iterable[str]):
        cleaned = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
        self.max_match_chars = max((len(t) for t in cleaned), default=0)
        alternatives = "|".join(re.escape(t) for t in cleaned)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        self._empty = not cleaned

    def find(self, text: str) -> tuple[int, int] | None:
        if self._empty:
            return None
        match = self._pattern.search(text)
        return match.span() if match else None


class OutputGuard:
    """Releases streamed text only once no flagged span can still start inside it."""

    def __init__(self, moderator: Moderator):
        self._moderator = moderator
        self._pending = ""
        # The last released character, so a word boundary before the pending text is seen.
        self._before = ""
        self.flagged = False

    def push(self, delta: str, final: bool = False) -> str:
        """Adds text; returns what is safe to send. After a flag, returns the text before it."""
        self._pending += delta
        span = self._moderator.find(self._before + self._pending)
        offset = len(self._before)
        # A match touching the end may still grow or vanish ("bad" -> "badge"): wait for more.
        if span and (final or span[1] < offset + len(self._pending)):
            self.flagged = True
            safe, self._pending = self._pending[: max(0, span[0] - offset)], ""
            return safe
        cut = len(self._pending) if final else len(self._pending) - self._moderator.max_match_chars
        safe, self._pending = self._pending[: max(0, cut)], self._pending[max(0, cut) :]
        if safe:
            self._before = safe[-1]
        return safe
