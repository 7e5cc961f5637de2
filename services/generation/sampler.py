"""Per-sequence sampling from one row of logits (numpy, no framework).

A sequence with a grammar (structured output) masks its row to the tokens the grammar allows
before anything else, and advances the grammar with the token it chose.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.common.domain import PLATFORM_SAMPLING, SamplingParams

if TYPE_CHECKING:
    from services.generation.constrained import Grammar

# Tokens a top-p cut first looks among (usually enough: probability mass is concentrated).
NUCLEUS_START = 64


@dataclass(frozen=True)
class ResolvedSampling:
    """Sampling with every value decided; built once per request."""

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: tuple[str, ...]
    seed: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    # Structured output: every token is chosen among those this grammar allows.
    grammar: Grammar | None = None

    @classmethod
    def resolve(cls, params: SamplingParams, max_new_tokens: int) -> ResolvedSampling:
        """`max_new_tokens` is what the context leaves (the caller refused more)."""
        # Ranges are the edge's to check (edge/protocol.py); the gRPC API documents them.
        p = params.with_defaults(PLATFORM_SAMPLING)
        return cls(
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            max_tokens=min(p.max_tokens or p.n_predict, max_new_tokens),
            stop=p.stop,
            seed=p.seed if p.seed is not None else secrets.randbits(63),
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            logit_bias=p.logit_bias,
            stop_token_ids=frozenset(p.stop_token_ids),
            logprobs=p.logprobs,
            top_logprobs=p.top_logprobs,
            ignore_eos=p.ignore_eos,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


class Sampler:
    """Chooses the next token of one sequence; owns its random generator."""

    def __init__(self, params: ResolvedSampling, prompt_ids: list[int]):
        self._params = params
        self._rng = np.random.default_rng(params.seed)
        self._prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        self._generated: list[int] = []
        self._bias_ids = np.array([t for t, _ in params.logit_bias], dtype=np.int64)
        self._bias_values = np.array([b for _, b in params.logit_bias], dtype=np.float32)
        self._matcher = params.grammar.matcher() if params.grammar is not None else None

    @property
    def done(self) -> bool:
        """The sequence's grammar is complete: it must end here (False without a grammar)."""
        return self._matcher is not None and self._matcher.done

    def next_token(self, logits: np.ndarray) -> int:
        p = self._params
        if self._matcher is not None:
            logits = self._matcher.mask(logits)
        logits = self._apply_penalties(logits)
        if p.greedy:
            token = int(np.argmax(logits))
        else:
            token = self._sample(logits.astype(np.float64) / p.temperature)
        if self._matcher is not None:
            self._matcher.consume(token)
        self._generated.append(token)
        return token

    def _apply_penalties(self, logits: np.ndarray) -> np.ndarray:
        p = self._params
        penalize_counts = bool(self._generated) and (p.presence_penalty or p.frequency_penalty)
        if not (self._bias_ids.size or p.repetition_penalty != 1.0 or penalize_counts):
            return logits
        logits = logits.copy()
        if self._bias_ids.size:
            logits[self._bias_ids] += self._bias_values
        if p.repetition_penalty != 1.0:
            seen = np.unique(np.concatenate([self._prompt_ids, self._generated]).astype(np.int64))
            values = logits[seen]
            logits[seen] = np.where(
                values > 0, values / p.repetition_penalty, values * p.repetition_penalty
            )
        if penalize_counts:
            tokens, counts = np.unique(np.asarray(self._generated), return_counts=True)
            logits[tokens] -= p.frequency_penalty * counts + p.presence_penalty
        return logits

    def _sample(self, scaled: np.ndarray) -> int:
        p = self._params
        candidates = None
        if p.top_k and p.top_k < scaled.shape[0]:
            candidates = np.argpartition(scaled, -p.top_k)[-p.top_k :]
            scaled = scaled[candidates]
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        kept = nucleus(probs, p.top_p) if p.top_p < 1.0 else None
        if kept is not None:
            probs = probs[kept]
        index = int(np.searchsorted(np.cumsum(probs), self._rng.random() * probs.sum()))
        index = min(index, probs.shape[0] - 1)
        if kept is not None:
            index = int(kept[index])
        return int(candidates[index]) if candidates is not None else index


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The smallest set of likeliest tokens whose probability reaches top_p, in vocabulary
    order. Sorts only the likeliest few (grown until they hold top_p), not the vocabulary."""
    size = min(NUCLEUS_START, probs.shape[0])
    while True:
        likeliest = np.argpartition(probs, -size)[-size:]
        if size == probs.shape[0] or probs[likeliest].sum() >= top_p:
            break
        size = min(size * 8, probs.shape[0])
    order = likeliest[np.argsort(probs[likeliest])[::-1]]
    cumulative = np.cumsum(probs[order])
    return np.sort(order[: int(np.searchsorted(cumulative, top_p)) + 1])


def token_logprobs(
    logits: np.ndarray, token: int, top_n: int
) -> tuple[float, list[tuple[int, float]]]:
    """Log probability of `token` and the `top_n` likeliest tokens, under the raw logits."""
    shifted = logits.astype(np.float64) - float(logits.max())
    log_norm = float(np.log(np.exp(shifted).sum()))
    top: list[tuple[int, float]] = []
    if top_n:
        candidates = np.argpartition(shifted, -top_n)[-top_n:]
        candidates = candidates[np.argsort(shifted[candidates])[::-1]]
        top = [(int(i), float(shifted[i] - log_norm)) for i in candidates]
    return float(shifted[token] - log_norm), top
