"""Prefix caching: the KV entries of recently prefilled prompts, reused by a request whose
tokens start the same way (a serving's system prompt, the earlier turns of a conversation, a
RAG template), so that only the rest of its prompt is prefilled.

Prompts are cut into blocks of `block_tokens`. A block's key hashes every token up to and
including it (a chain), so equal keys mean equal prefixes, never just equal blocks. Each
block's entries are stored once, whatever number of prompts share it: inserting a prompt
copies only the blocks not cached yet. A lookup walks the new prompt's chain and keeps the
longest run of cached blocks. Blocks are bounded in bytes and leave least recently used
first; a prompt's blocks are touched last to first, so a chain loses its end before its
start. Touched only by the engine's worker thread.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable
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
    # Per block, per cache array (layer x key/value): [kv_heads, block_tokens, head_dim].
    blocks: list[list[np.ndarray]]


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
        # Chained key -> the block's entries per cache array, least recently used first.
        self._blocks: collections.OrderedDict[bytes, list[np.ndarray]] = collections.OrderedDict()

    def lookup(self, prompt_ids: list[int], beyond: int = 0) -> PrefixHit | None:
        """The longest cached start of the prompt, if it is longer than `beyond` tokens (what
        the caller has already); only a hit returned counts and is touched."""
        usable_blocks = (len(prompt_ids) - MIN_REST) // self.block_tokens
        keys = []
        for key in block_keys(prompt_ids, self.block_tokens)[:usable_blocks]:
            if key not in self._blocks:
                break
            keys.append(key)
        if len(keys) * self.block_tokens <= beyond:
            return None
        self._touch(keys)
        tokens = len(keys) * self.block_tokens
        self.hits += 1
        self.saved_tokens += tokens
        return PrefixHit(tokens, [self._blocks[key] for key in keys])

    def insert(self, prompt_ids: list[int], read: Callable[[int, int], list[np.ndarray]]) -> None:
        """Keeps the prompt's full blocks, reading only those not cached yet: `read(start,
        end)` gives a copy of the prompt's entries at those positions ([kv_heads, end - start,
        head_dim] per array)."""
        keys = block_keys(prompt_ids, self.block_tokens)
        for index, key in enumerate(keys):
            if key in self._blocks:
                continue
            start = index * self.block_tokens
            block = read(start, start + self.block_tokens)
            size = sum(a.nbytes for a in block)
            if size > self.capacity_bytes:
                return
            while self.nbytes + size > self.capacity_bytes:
                _, evicted = self._blocks.popitem(last=False)
                self.nbytes -= sum(a.nbytes for a in evicted)
            self._blocks[key] = block
            self.nbytes += size
        self._touch(keys)

    def _touch(self, keys: list[bytes]) -> None:
        # Last to first: the chain's first blocks end up the most recently used.
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)
