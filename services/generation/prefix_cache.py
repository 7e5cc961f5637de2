"""Prefix caching: the KV entries of recently prefilled prompts, reused by a request whose
tokens start the same way (a serving's system prompt, the earlier turns of a conversation, a
RAG template), so that only the rest of its prompt is prefilled.

Prompts are cut into blocks of `block_tokens`. A block's key hashes every token up to and
including it (a chain), so equal keys mean equal prefixes, never just equal blocks. An entry
holds one prompt's KV for its full blocks and is found under each of its blocks' keys; a
lookup walks the new prompt's chain and keeps the longest hit. Entries are bounded in bytes
and leave least recently used first. Touched only by the engine's worker thread.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass

import numpy as np

# Prompt tokens a hit always leaves to prefill (see PrefixHit.tokens).
MIN_REST = 2


@dataclass(frozen=True)
class PrefixHit:
    # Prompt tokens whose KV is reused: whole blocks, and always at least two tokens short of
    # the prompt (its last token must run to give the first logits, and a chunk of one token
    # after a past rounds differently from the same token in a longer chunk).
    tokens: int
    # Per cache array (layer x key/value): [1, kv_heads, tokens, head_dim].
    cache: list[np.ndarray]


@dataclass
class _Entry:
    keys: list[bytes]
    cache: list[np.ndarray]
    nbytes: int


def block_keys(prompt_ids: list[int], block_tokens: int) -> list[bytes]:
    """The chained key of each full block of the prompt."""
    keys, digest = [], b""
    tokens = np.asarray(prompt_ids, np.int64)
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        block = tokens[start : start + block_tokens].tobytes()
        digest = hashlib.blake2b(digest + block, digest_size=16).digest()
        keys.append(digest)
    return keys


class PrefixCache:
    def __init__(self, capacity_bytes: int, block_tokens: int = 64):
        self.capacity_bytes = capacity_bytes
        self.block_tokens = block_tokens
        self.nbytes = 0
        # Lookups that reused something, and the prompt tokens they did not prefill.
        self.hits = 0
        self.saved_tokens = 0
        # Entry id -> entry, least recently used first; key -> (entry id, blocks it covers).
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._by_key: dict[bytes, tuple[int, int]] = {}
        self._next_id = 0

    def lookup(self, prompt_ids: list[int]) -> PrefixHit | None:
        usable_blocks = (len(prompt_ids) - MIN_REST) // self.block_tokens
        best: tuple[int, int] | None = None
        for blocks, key in enumerate(block_keys(prompt_ids, self.block_tokens)[:usable_blocks]):
            found = self._by_key.get(key)
            if found is None:
                break
            best = (found[0], blocks + 1)
        if best is None:
            return None
        entry_id, blocks = best
        self._entries.move_to_end(entry_id)
        tokens = blocks * self.block_tokens
        self.hits += 1
        self.saved_tokens += tokens
        cache = self._entries[entry_id].cache
        return PrefixHit(tokens, [a[:, :, :tokens] for a in cache])

    def insert(self, prompt_ids: list[int], cache: list[np.ndarray]) -> None:
        """Keeps the prompt's full blocks from `cache` ([1, kv_heads, >= tokens, head_dim] per
        array), unless they are all cached already."""
        keys = block_keys(prompt_ids, self.block_tokens)
        if not keys or keys[-1] in self._by_key:
            return
        tokens = len(keys) * self.block_tokens
        kept = [np.ascontiguousarray(a[:1, :, :tokens]) for a in cache]
        entry = _Entry(keys, kept, sum(a.nbytes for a in kept))
        if entry.nbytes > self.capacity_bytes:
            return
        while self.nbytes + entry.nbytes > self.capacity_bytes:
            self._evict()
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self._entries[entry_id] = entry
        self.nbytes += entry.nbytes
        for blocks, key in enumerate(keys):
            self._by_key[key] = (entry_id, blocks + 1)

    def _evict(self) -> None:
        entry_id, entry = self._entries.popitem(last=False)
        self.nbytes -= entry.nbytes
        for key in entry.keys:
            # A newer entry may own the same key: leave it to that one.
            if self._by_key.get(key, (None,))[0] == entry_id:
                del self._by_key[key]
