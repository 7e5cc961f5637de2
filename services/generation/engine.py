"""Continuous-batching decode loop for one model.

A single worker thread owns the batch: between decode steps it admits waiting sequences
(batched, left-padded prefill) and drops finished or cancelled ones, freeing their KV cache
rows. The event loop only submits sequences and reads their events, so no ONNX Runtime call
ever runs on it.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import Internal, Unavailable
from services.generation.onnx_model import OnnxCausalLM
from services.generation.sampler import ResolvedSampling, Sampler
from services.generation.stop import StopStringMatcher
from services.generation.tokenizer import IncrementalDetokenizer, TextTokenizer

logger = logging.getLogger(__name__)


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"


@dataclass(frozen=True)
class GenerationEvent:
    """New text of one sequence; the last event has finish_reason and the token counts."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Sequence:
    """One request's decoding state; touched only by the worker thread after submission."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: ResolvedSampling,
        tokenizer: TextTokenizer,
        deliver: Callable[[GenerationEvent | Exception], None],
    ):
        self.prompt_ids = prompt_ids
        self.params = params
        self.sampler = Sampler(params, prompt_ids)
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
        self.stop_matcher = StopStringMatcher(params.stop)
        self.deliver = deliver
        self.generated: list[int] = []
        # Tokens of this sequence already in the KV cache; the next token goes at this position.
        self.position = 0
        self.last_token = -1
        self.finished = False
        # Set from the event loop thread; read by the worker between steps.
        self.cancelled = False

    def accept(self, logits: np.ndarray, eos_ids: frozenset[int], context_length: int) -> None:
        """Samples the next token from this sequence's logits row and reports it."""
        token = self.sampler.next_token(logits)
        self.last_token = token
        self.generated.append(token)
        finish = None
        text = ""
        if token in eos_ids:
            finish = FinishReason.STOP
        else:
            text, stopped = self.stop_matcher.push(self.detokenizer.push(token))
            if stopped:
                finish = FinishReason.STOP
            elif len(self.generated) >= self.params.max_tokens:
                finish = FinishReason.LENGTH
            elif self.position + 1 >= context_length:
                finish = FinishReason.LENGTH
            if finish is FinishReason.LENGTH:
                text += self.stop_matcher.flush()
        if finish is None:
            self.deliver(GenerationEvent(text=text, token_ids=[token]))
            return
        self.finished = True
        self.deliver(
            GenerationEvent(
                text=text,
                token_ids=[token],
                finish_reason=finish,
                prompt_tokens=len(self.prompt_ids),
                completion_tokens=len(self.generated),
            )
        )


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
        keep = [i for i, s in enumerate(self.sequences) if not (s.finished or s.cancelled)]
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
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._batch = _Batch()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Sequences still decoding (read from other threads; finished ones are not counted)."""
        return sum(not (s.finished or s.cancelled) for s in self._batch.sequences)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()

    async def generate(
        self, prompt_ids: list[int], params: ResolvedSampling
    ) -> AsyncIterator[GenerationEvent]:
        """Streams events of one sequence; closing the iterator early cancels the sequence."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | Exception] = asyncio.Queue()

        def deliver(event: GenerationEvent | Exception) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        sequence = _Sequence(prompt_ids, params, self.tokenizer, deliver)
        with self._wakeup:
            if self._stopping:
                raise Unavailable("The generation engine is shutting down.")
            self._waiting.append(sequence)
            self._wakeup.notify()
        try:
            while True:
                event = await events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            # Client gone or consumer stopped: the worker drops it before the next step.
            sequence.cancelled = True

    # Worker thread

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopping and not self._waiting and not self._batch:
                    self._wakeup.wait()
                if self._stopping:
                    break
                joining = self._admit()
            try:
                self._step(joining)
            except Exception as error:  # noqa: BLE001 - every affected stream must hear of it
                logger.exception("decode step failed")
                failure = Internal(f"Generation failed: {type(error).__name__}")
                for sequence in self._batch.sequences + joining:
                    sequence.finished = True
                    sequence.deliver(failure)
                self._batch = _Batch()
        for sequence in list(self._waiting) + self._batch.sequences:
            sequence.deliver(Unavailable("The generation engine shut down."))

    def _admit(self) -> list[_Sequence]:
        """Takes waiting sequences that fit the batch and the prefill budget (caller holds lock)."""
        joining: list[_Sequence] = []
        longest = 0
        while self._waiting and len(self._batch) + len(joining) < self.max_batch_size:
            candidate = self._waiting[0]
            if candidate.cancelled:
                self._waiting.popleft()
                continue
            padded = max(longest, len(candidate.prompt_ids)) * (len(joining) + 1)
            if joining and padded > self.max_prefill_tokens:
                break
            longest = max(longest, len(candidate.prompt_ids))
            joining.append(self._waiting.popleft())
        return joining

    def _step(self, joining: list[_Sequence]) -> None:
        self._batch.drop_done()
        if joining:
            self._prefill(joining)
        self._batch.drop_done()
        if self._batch:
            self._decode()
            self._batch.drop_done()

    def _prefill(self, sequences: list[_Sequence]) -> None:
        length = max(len(s.prompt_ids) for s in sequences)
        count = len(sequences)
        input_ids = np.full((count, length), self.tokenizer.pad_token_id, np.int64)
        mask = np.zeros((count, length), np.int64)
        positions = np.zeros((count, length), np.int64)
        for row, sequence in enumerate(sequences):
            size = len(sequence.prompt_ids)
            input_ids[row, length - size :] = sequence.prompt_ids
            mask[row, length - size :] = 1
            positions[row, length - size :] = np.arange(size)
        logits, cache = self.model.forward(
            input_ids, mask, positions, self.model.empty_cache(count)
        )
        # Join the batch before the first token is reported, so observers see them running.
        self._batch.merge(sequences, cache, mask)
        for row, sequence in enumerate(sequences):
            sequence.position = len(sequence.prompt_ids)
            sequence.accept(logits[row], self.tokenizer.eos_token_ids, self.context_length)

    def _decode(self) -> None:
        batch = self._batch
        count = len(batch)
        input_ids = np.array([[s.last_token] for s in batch.sequences], np.int64)
        positions = np.array([[s.position] for s in batch.sequences], np.int64)
        mask = np.concatenate([batch.mask, np.ones((count, 1), np.int64)], axis=1)
        logits, batch.cache = self.model.forward(input_ids, mask, positions, batch.cache)
        batch.mask = mask
        for row, sequence in enumerate(batch.sequences):
            sequence.position += 1
            if not sequence.cancelled:
                sequence.accept(logits[row], self.tokenizer.eos_token_ids, self.context_length)
