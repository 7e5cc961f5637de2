"""Continuous-batching decode loop for one model.

A single worker thread owns the batch: between decode steps it admits waiting requests
(batched, left-padded prefill; prompts longer than one chunk, and prompts whose start is in
the prefix cache, are prefilled a chunk per step on top of their past, so running sequences
keep decoding) and drops finished or cancelled sequences, freeing their
KV cache rows. A request for n completions is prefilled once and its cache rows copied n
times. The event loop only submits requests and reads their events, so no ONNX Runtime call
ever runs on it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import Internal, ResourceExhausted, Unavailable
from services.generation.metrics import EngineMetrics
from services.generation.onnx_model import OnnxCausalLM
from services.generation.prefix_cache import PrefixCache
from services.generation.sampler import ResolvedSampling, Sampler, token_logprobs
from services.generation.stop import StopStringMatcher
from services.generation.tokenizer import IncrementalDetokenizer, TextTokenizer

logger = logging.getLogger(__name__)


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    # (token id, logprob) of the likeliest tokens at this position, likeliest first.
    top: list[tuple[int, float]]


@dataclass(frozen=True)
class GenerationEvent:
    """New text of one completion; its last event has finish_reason and its token count."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0


Deliver = Callable[[GenerationEvent | Exception], None]


class _Sequence:
    """One completion's decoding state; touched only by the worker thread after submission."""

    def __init__(
        self,
        index: int,
        prompt_ids: list[int],
        params: ResolvedSampling,
        tokenizer: TextTokenizer,
        deliver: Deliver,
    ):
        self.index = index
        self.params = params
        self.sampler = Sampler(params, prompt_ids)
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stop_matcher = StopStringMatcher(params.stop)
        self.deliver = deliver
        self.generated: list[int] = []
        # Tokens of this sequence already in the KV cache; the next token goes at this position.
        self.position = len(prompt_ids)
        self.last_token = -1
        self.finished = False
        # Set from the event loop thread; read by the worker between steps.
        self.cancelled = False
        self.last_token_at = 0.0

    @property
    def active(self) -> bool:
        return not (self.finished or self.cancelled)

    def accept(
        self, logits: np.ndarray, eos_ids: frozenset[int], context_length: int
    ) -> FinishReason | None:
        """Samples the next token from this sequence's logits row and reports it."""
        token = self.sampler.next_token(logits)
        self.last_token = token
        self.generated.append(token)
        logprobs = []
        if self.params.logprobs:
            logprob, top = token_logprobs(logits, token, self.params.top_logprobs)
            logprobs = [TokenLogprob(token, logprob, top)]
        finish = None
        text = ""
        ends = token in self.params.stop_token_ids
        if ends or (token in eos_ids and not self.params.ignore_eos):
            finish = FinishReason.STOP
        else:
            text, stopped = self.stop_matcher.push(self.detokenizer.push(token))
            if stopped or self.sampler.done:  # a stop string, or its grammar is complete
                finish = FinishReason.STOP
            elif len(self.generated) >= self.params.max_tokens:
                finish = FinishReason.LENGTH
            elif self.position + 1 >= context_length:
                finish = FinishReason.LENGTH
        if finish is not None:
            # Text held back as the possible start of a stop string is part of the reply when
            # the sequence ends any other way (EOS, a stop token, length); after a stop string
            # matched, nothing is held.
            text += self.stop_matcher.flush()
        self.finished = finish is not None
        self.deliver(
            GenerationEvent(
                index=self.index,
                text=text,
                token_ids=[token],
                logprobs=logprobs,
                finish_reason=finish,
                completion_tokens=len(self.generated) if finish else 0,
            )
        )
        return finish


class _Request:
    """A prompt waiting for prefill and the n sequences that will continue it."""

    def __init__(self, prompt_ids: list[int], sequences: list[_Sequence]):
        self.prompt_ids = prompt_ids
        self.sequences = sequences
        self.enqueued_at = time.monotonic()
        # Chunked prefill progress: tokens already in `cache`.
        self.prefilled = 0
        self.cache: list[np.ndarray] | None = None

    @property
    def cancelled(self) -> bool:
        return all(s.cancelled for s in self.sequences)


def _left_pad(arrays: list[np.ndarray], mask: np.ndarray, length: int):
    """Pads KV arrays (axis 2) and the mask (axis 1) on the left to `length` positions."""
    extra = length - mask.shape[1]
    if extra == 0:
        return arrays, mask
    padded = [np.pad(a, ((0, 0), (0, 0), (extra, 0), (0, 0))) for a in arrays]
    return padded, np.pad(mask, ((0, 0), (extra, 0)))


class _Batch:
    """The running sequences and their shared, left-padded KV cache."""

    def __init__(self):
        self.sequences: list[_Sequence] = []
        self.cache: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), np.int64)

    def __len__(self) -> int:
        return len(self.sequences)

    def merge(self, sequences: list[_Sequence], cache: list[np.ndarray], mask: np.ndarray):
        if not self.sequences:
            self.sequences, self.cache, self.mask = sequences, cache, mask
            return
        length = max(self.mask.shape[1], mask.shape[1])
        own_cache, own_mask = _left_pad(self.cache, self.mask, length)
        new_cache, new_mask = _left_pad(cache, mask, length)
        self.cache = [
            np.concatenate(pair, axis=0) for pair in zip(own_cache, new_cache, strict=True)
        ]
        self.mask = np.concatenate([own_mask, new_mask], axis=0)
        self.sequences = self.sequences + sequences

    def drop_done(self) -> None:
        keep = [i for i, s in enumerate(self.sequences) if s.active]
        if len(keep) == len(self.sequences):
            return
        self.sequences = [self.sequences[i] for i in keep]
        if not keep:
            self.cache, self.mask = [], np.zeros((0, 0), np.int64)
            return
        mask = self.mask[keep]
        # Columns that are padding for every remaining row are dead weight: trim them.
        first = int(np.argmax(mask.any(axis=0)))
        self.mask = np.ascontiguousarray(mask[:, first:])
        self.cache = [np.ascontiguousarray(a[keep, :, first:]) for a in self.cache]


class GenerationEngine:
    def __init__(
        self,
        model: OnnxCausalLM,
        tokenizer: TextTokenizer,
        context_length: int,
        max_batch_size: int = 16,
        max_prefill_tokens: int = 2048,
        max_waiting: int = 256,
        metrics: EngineMetrics | None = None,
        prefix_cache: PrefixCache | None = None,
    ):
        self.model = model
        self.prefix_cache = prefix_cache
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.max_waiting = max_waiting
        self.metrics = metrics or EngineMetrics.disabled()
        self._waiting: collections.deque[_Request] = collections.deque()
        # A prompt longer than max_prefill_tokens, prefilled one chunk per step.
        self._chunking: _Request | None = None
        self._batch = _Batch()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Sequences still decoding (read from other threads; finished ones are not counted)."""
        return sum(s.active for s in self._batch.sequences)

    @property
    def waiting(self) -> int:
        waiting = sum(len(r.sequences) for r in list(self._waiting))
        chunking = self._chunking
        return waiting + (len(chunking.sequences) if chunking else 0)

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()

    async def generate(
        self, prompt_ids: list[int], params: list[ResolvedSampling]
    ) -> AsyncIterator[GenerationEvent]:
        """Streams the events of len(params) completions of one prompt, interleaved.

        Closing the iterator early cancels them all. RESOURCE_EXHAUSTED if the queue is full.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | Exception] = asyncio.Queue()

        def deliver(event: GenerationEvent | Exception) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        sequences = [
            _Sequence(index, prompt_ids, p, self.tokenizer, deliver)
            for index, p in enumerate(params)
        ]
        with self._wakeup:
            if self._stopping:
                raise Unavailable("The generation engine is shutting down.")
            if len(self._waiting) >= self.max_waiting:
                raise ResourceExhausted(
                    "The generation queue is full; retry shortly.", retry_after_s=1.0
                )
            self._waiting.append(_Request(prompt_ids, sequences))
            self._wakeup.notify()
        unfinished = len(sequences)
        try:
            while unfinished:
                event = await events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if event.finish_reason is not None:
                    unfinished -= 1
        finally:
            # Client gone or consumer stopped: the worker drops them before the next step.
            for sequence in sequences:
                sequence.cancelled = True

    # Worker thread

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not (self._stopping or self._waiting or self._batch or self._chunking):
                    self._wakeup.wait()
                if self._stopping:
                    break
                joining = self._admit()
            try:
                self._step(joining)
            except Exception as error:  # noqa: BLE001 - every affected stream must hear of it
                logger.exception("decode step failed")
                failure = Internal(f"Generation failed: {type(error).__name__}")
                chunking = [self._chunking] if self._chunking else []
                for request in joining + chunking:
                    self._batch.sequences.extend(request.sequences)
                for sequence in self._batch.sequences:
                    if not sequence.finished:
                        sequence.finished = True
                        sequence.deliver(failure)
                self._batch = _Batch()
                self._chunking = None
        shutdown = Unavailable("The generation engine shut down.")
        for request in list(self._waiting):
            for sequence in request.sequences:
                sequence.deliver(shutdown)
        for sequence in self._batch.sequences:
            sequence.deliver(shutdown)

    def _admit(self) -> list[_Request]:
        """Takes waiting requests that fit the batch and the prefill budget (caller holds lock).

        A prompt longer than the budget becomes the chunked prefill, one at a time.
        """
        joining: list[_Request] = []
        longest = 0
        taken = len(self._batch) + (len(self._chunking.sequences) if self._chunking else 0)
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                continue
            if taken + len(request.sequences) > self.max_batch_size and taken:
                break
            size = len(request.prompt_ids)
            if self._chunking is not None and (
                size > self.max_prefill_tokens or self._in_prefix_cache(request)
            ):
                # It waits for the chunked path (one step for a cached prefix's rest).
                break
            # Looked up first, whatever the size: a long prompt's cached prefix counts most.
            if self._reused_prefix(request) or size > self.max_prefill_tokens:
                self._chunking = self._waiting.popleft()
            else:
                padded = max(longest, size) * (len(joining) + 1)
                if joining and padded > self.max_prefill_tokens:
                    break
                longest = max(longest, size)
                joining.append(self._waiting.popleft())
            self.metrics.queue_time(time.monotonic() - request.enqueued_at)
            taken += len(request.sequences)
        return joining

    def _in_prefix_cache(self, request: _Request) -> bool:
        return self.prefix_cache is not None and self.prefix_cache.covers(request.prompt_ids)

    def _reused_prefix(self, request: _Request) -> bool:
        """Starts the request from the prefix cache's longest match, if any."""
        if self.prefix_cache is None:
            return False
        hit = self.prefix_cache.lookup(request.prompt_ids)
        self.metrics.prefix_lookup(hit.tokens if hit else 0)
        if hit is None:
            return False
        request.cache, request.prefilled = hit.cache, hit.tokens
        return True

    def _step(self, joining: list[_Request]) -> None:
        self._batch.drop_done()
        if self._chunking is not None:
            self._prefill_chunk(self._chunking)
        joining = [r for r in joining if not r.cancelled]
        if joining:
            self._prefill(joining)
        self._batch.drop_done()
        if self._batch:
            self._decode()
            self._batch.drop_done()
        self.metrics.occupancy(self.running, self.waiting)

    def _prefill(self, requests: list[_Request]) -> None:
        length = max(len(r.prompt_ids) for r in requests)
        count = len(requests)
        input_ids = np.full((count, length), self.tokenizer.pad_token_id, np.int64)
        mask = np.zeros((count, length), np.int64)
        positions = np.zeros((count, length), np.int64)
        for row, request in enumerate(requests):
            size = len(request.prompt_ids)
            input_ids[row, length - size :] = request.prompt_ids
            mask[row, length - size :] = 1
            positions[row, length - size :] = np.arange(size)
        logits, cache = self.model.forward(
            input_ids, mask, positions, self.model.empty_cache(count)
        )
        self._start(requests, logits, cache, mask)

    def _prefill_chunk(self, request: _Request) -> None:
        if request.cancelled:
            self._chunking = None
            return
        start = request.prefilled
        end = min(start + self.max_prefill_tokens, len(request.prompt_ids))
        cache = request.cache or self.model.empty_cache(1)
        logits, request.cache = self.model.forward(
            np.array([request.prompt_ids[start:end]], np.int64),
            np.ones((1, end), np.int64),
            np.arange(start, end, dtype=np.int64)[None],
            cache,
        )
        request.prefilled = end
        if end == len(request.prompt_ids):
            self._chunking = None
            self._start([request], logits, request.cache, np.ones((1, end), np.int64))
            request.cache = None

    def _start(
        self,
        requests: list[_Request],
        logits: np.ndarray,
        cache: list[np.ndarray],
        mask: np.ndarray,
    ) -> None:
        """Copies each request's prefilled row once per completion, joins them to the batch,
        then samples their first tokens."""
        rows = [row for row, r in enumerate(requests) for _ in r.sequences]
        if len(rows) != len(requests):
            cache = [a[rows] for a in cache]
            mask = mask[rows]
        sequences = [s for r in requests for s in r.sequences]
        # Join the batch before the first token is reported, so observers see them running.
        self._batch.merge(sequences, cache, mask)
        now = time.monotonic()
        for row, request in enumerate(requests):
            self.metrics.prompt_tokens(len(request.prompt_ids))
            self.metrics.first_token(now - request.enqueued_at)
            if self.prefix_cache is not None:
                # The prompt's first token sits after the row's left padding, if any.
                padding = mask.shape[1] - int(mask[rows.index(row)].sum())
                prompt_cache = [a[rows.index(row) :] for a in cache]
                self.prefix_cache.insert(request.prompt_ids, prompt_cache, padding)
        if self.prefix_cache is not None:
            self.metrics.prefix_cache_bytes(self.prefix_cache.nbytes)
        for row, sequence in zip(rows, sequences, strict=True):
            self._accept(sequence, logits[row], now)

    def _decode(self) -> None:
        batch = self._batch
        count = len(batch)
        input_ids = np.array([[s.last_token] for s in batch.sequences], np.int64)
        positions = np.array([[s.position] for s in batch.sequences], np.int64)
        mask = np.concatenate([batch.mask, np.ones((count, 1), np.int64)], axis=1)
        logits, batch.cache = self.model.forward(input_ids, mask, positions, batch.cache)
        batch.mask = mask
        self.metrics.batch_size(count)
        now = time.monotonic()
        for row, sequence in enumerate(batch.sequences):
            sequence.position += 1
            if not sequence.cancelled:
                self.metrics.inter_token(now - sequence.last_token_at)
                self._accept(sequence, logits[row], now)

    def _accept(self, sequence: _Sequence, logits: np.ndarray, now: float) -> None:
        sequence.last_token_at = now
        finish = sequence.accept(logits, self.tokenizer.eos_token_ids, self.context_length)
        self.metrics.generated_token()
        if finish is not None:
            self.metrics.finished(finish.value)
