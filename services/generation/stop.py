"""Stop strings over streamed text: never emits text that could still become a stop string."""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stop: tuple[str, ...]):
        self._stop = tuple(s for s in stop if s)
        self._pending = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """Adds new text; returns (text safe to emit, whether a stop string was hit)."""
        if not self._stop:
            return delta, False
        self._pending += delta
        hits = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            text, self._pending = self._pending[: min(hits)], ""
            return text, True
        held = self._held_suffix_length()
        cut = len(self._pending) - held
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text, False

    def flush(self) -> str:
        """The held-back text, once generation ended; empty after a stop string matched."""
        text, self._pending = self._pending, ""
        return text

    def _held_suffix_length(self) -> int:
        # Longest suffix of the pending text that is a proper prefix of some stop string.
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest
