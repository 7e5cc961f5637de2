"""Continuous-batching decode loop for one model over KV slots.

A single worker thread owns the slots. A waiting request is admitted when there is a free
slot for each of its completions; its prompt (after any prefix found in the prefix cache) is
prefilled into its slot a chunk at a time, up to `max_prefill_tokens` per step, and every step
also decodes one token for each running sequence, so a long prompt never stalls the others.
A finished or cancelled sequence gives its slot back at once. A request for n completions is
prefilled once and its slot's entries copied to the other n - 1. The event loop only submits
requests and reads their events, so no ONNX Runtime call ever runs on it.
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
from functools import partial

import numpy as np

from services.common import tracing
from services.common.errors import Internal, InvalidArgument, ResourceExhausted, Unavailable
from services.generation.metrics import EngineMetrics
from services.generation.onnx_model import OnnxCausalLM
from services.generation.prefix_cache import MIN_REST, PrefixCache
from services.generation.sampler import ResolvedSampling, Sampler, token_logprobs
from services.generation.stop import StopStringMatcher
from services.generation.tokenizer import IncrementalDetokenizer, TextTokenizer

logger = logging.getLogger(__name__)

# A chunk of one token after a past rounds differently from the same token inside a longer
# chunk (int4 MatMulNBits), so prompts are prefilled in chunks of at least two tokens and
# greedy output does not depend on where the chunks fall.
MIN_PREFILL_CHUNK = MIN_REST


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
        self.prompt_ids = prompt_ids
        self.generated: list[int] = []
        # Its KV slot, from admission on.
        self.slot = -1
        self.last_token = -1
        self.finished = False
        # Set from the event loop thread; read by the worker between steps.
        self.cancelled = False
        self.last_token_at = 0.0

    @property
    def active(self) -> bool:
        return not (self.finished or self.cancelled)

    def accept(
        self, logits: np.ndarray, eos_ids: frozenset[int], context_full: bool
    ) -> FinishReason | None:
        """Samples the next token from this sequence's logits row and reports it; the token
        fills the context when `context_full`."""
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
            elif context_full:
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
    """A prompt being admitted and prefilled, and the n sequences that will continue it."""

    def __init__(self, prompt_ids: list[int], sequences: list[_Sequence]):
        self.prompt_ids = prompt_ids
        self.sequences = sequences
        self.enqueued_at = time.monotonic()
        # Prompt tokens already in the first sequence's slot.
        self.prefilled = 0
        # Trace spans of its queue wait, prefill and decode, under the Generate call's span.
        self.phases = tracing.phases("generation.queue")

    @property
    def slot(self) -> int:
        return self.sequences[0].slot

    @property
    def cancelled(self) -> bool:
        return all(s.cancelled for s in self.sequences)


class GenerationEngine:
    def __init__(
        self,
        model: OnnxCausalLM,
        tokenizer: TextTokenizer,
        context_length: int,
        kv_slots: int = 16,
        max_prefill_tokens: int = 512,
        max_waiting: int = 256,
        metrics: EngineMetrics | None = None,
        prefix_cache: PrefixCache | None = None,
    ):
        if max_prefill_tokens < MIN_PREFILL_CHUNK:
            raise ValueError(f"max_prefill_tokens must be at least {MIN_PREFILL_CHUNK}")
        self.model = model
        self.prefix_cache = prefix_cache
        self.tokenizer = tokenizer
        # Tokens one sequence may hold (prompt and completion): a slot's length.
        self.context_length = context_length
        self.max_prefill_tokens = max_prefill_tokens
        self.max_waiting = max_waiting
        self.metrics = metrics or EngineMetrics.disabled()
        self.kv = model.allocate(kv_slots, context_length)
        # Prompt tokens not prefilled because a free slot still held them.
        self.slot_reused_tokens = 0
        self._waiting: collections.deque[_Request] = collections.deque()
        # Admitted: slots held, prompt being prefilled (oldest first).
        self._prefilling: list[_Request] = []
        self._decoding: list[_Sequence] = []
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Sequences still decoding (read from other threads; finished ones are not counted)."""
        return sum(s.active for s in list(self._decoding))

    @property
    def waiting(self) -> int:
        requests = list(self._waiting) + list(self._prefilling)
        return sum(len(r.sequences) for r in requests)

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join()
        self.kv.close()

    async def generate(
        self, prompt_ids: list[int], params: list[ResolvedSampling]
    ) -> AsyncIterator[GenerationEvent]:
        """Streams the events of len(params) completions of one prompt, interleaved.

        Closing the iterator early cancels them all. RESOURCE_EXHAUSTED if the queue is full.
        """
        if len(params) > self.kv.slots:
            raise InvalidArgument(
                f"n={len(params)} is more completions than this model runs at once "
                f"({self.kv.slots}).",
                param="n",
            )
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
            request = _Request(prompt_ids, sequences)
            self._waiting.append(request)
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
            request.phases.end()

    # Worker thread

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not (self._stopping or self._waiting or self._prefilling or self._decoding):
                    self._wakeup.wait()
                if self._stopping:
                    break
                admitted = self._take_admissible()
            try:
                self._admit(admitted)
                self._step()
            except Exception as error:  # noqa: BLE001 - every affected stream must hear of it
                logger.exception("decode step failed")
                failure = Internal(f"Generation failed: {type(error).__name__}")
                for request in admitted + self._prefilling:
                    self._decoding.extend(request.sequences)
                for sequence in self._decoding:
                    if not sequence.finished:
                        sequence.finished = True
                        sequence.deliver(failure)
                self._prefilling, self._decoding = [], []
                self.kv.release_all()
        shutdown = Unavailable("The generation engine shut down.")
        requests = list(self._waiting) + self._prefilling
        for sequence in [s for r in requests for s in r.sequences] + self._decoding:
            if sequence.active:
                sequence.deliver(shutdown)

    def _take_admissible(self) -> list[_Request]:
        """Takes the waiting requests, oldest first, that free slots can hold (holds the lock)."""
        taken: list[_Request] = []
        free = self.kv.free
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                continue
            if len(request.sequences) > free:
                break
            free -= len(request.sequences)
            taken.append(self._waiting.popleft())
        return taken

    def _admit(self, requests: list[_Request]) -> None:
        """Gives each request its slots and starts it from the longest start of its prompt
        already computed: held by a free slot (taken as it is) or in the prefix cache (copied
        into the slot)."""
        for request in requests:
            self.metrics.queue_time(time.monotonic() - request.enqueued_at)
            request.phases.next("generation.prefill")
            first, *others = request.sequences
            if self.prefix_cache is None:
                first.slot = self.kv.acquire()
            else:
                most = len(request.prompt_ids) - MIN_REST
                first.slot = self.kv.acquire(request.prompt_ids, most)
            for sequence in others:
                sequence.slot = self.kv.acquire()
            request.prefilled = int(self.kv.lengths[first.slot])
            if self.prefix_cache is not None:
                hit = self.prefix_cache.lookup(request.prompt_ids, beyond=request.prefilled)
                if hit is not None:
                    self.kv.load(first.slot, hit.blocks)
                    request.prefilled = hit.tokens
                else:
                    self.slot_reused_tokens += request.prefilled
                self.metrics.prefix_lookup(request.prefilled)
            self._prefilling.append(request)

    def _step(self) -> None:
        self._drop_done()
        budget = self.max_prefill_tokens
        for request in list(self._prefilling):
            used = self._prefill_chunk(request, budget)
            if not used:
                break
            budget -= used
        # Sequences that ended on their first token leave before the decode run.
        self._drop_done()
        if self._decoding:
            self._decode()
        self.metrics.occupancy(self.running, self.waiting)
        self.metrics.kv_usage(
            self.kv.slots - self.kv.free, self.kv.slots, int(self.kv.lengths.sum())
        )

    def _drop_done(self) -> None:
        """Gives back the slots of finished and cancelled sequences and requests."""
        for sequence in self._decoding:
            if not sequence.active:
                # Its prompt's entries stay for a prompt that starts alike (not the generated
                # ones: a token decoded alone rounds unlike the same token in a prefill).
                self.kv.release(sequence.slot, sequence.prompt_ids)
        self._decoding = [s for s in self._decoding if s.active]
        for request in self._prefilling:
            if request.cancelled:
                for sequence in request.sequences:
                    self.kv.release(sequence.slot)
        self._prefilling = [r for r in self._prefilling if not r.cancelled]

    def _prefill_chunk(self, request: _Request, budget: int) -> int:
        """Prefills the next chunk of the request's prompt; returns its tokens (0: none fit)."""
        start = request.prefilled
        rest = len(request.prompt_ids) - start
        size = min(budget, rest)
        if rest - size == 1:
            # Never leave a one-token final chunk: it rounds differently (see MIN_PREFILL_CHUNK).
            size -= 1
        if size < min(MIN_PREFILL_CHUNK, rest):
            return 0
        logits = self.model.forward(
            self.kv,
            request.slot,
            np.array([request.prompt_ids[start : start + size]], np.int64),
            self.kv.lengths[request.slot : request.slot + 1],
        )
        request.prefilled += size
        self.kv.lengths[request.slot] = request.prefilled
        if request.prefilled == len(request.prompt_ids):
            self._prefilling.remove(request)
            self._start(request, logits[0])
        return size

    def _start(self, request: _Request, logits: np.ndarray) -> None:
        """Copies the prefilled slot to the request's other completions, puts them all in the
        decoding batch and samples their first tokens."""
        size = len(request.prompt_ids)
        for sequence in request.sequences[1:]:
            self.kv.copy(request.slot, sequence.slot, size)
        if self.prefix_cache is not None:
            self.prefix_cache.insert(request.prompt_ids, partial(self.kv.entries, request.slot))
            self.metrics.prefix_cache_bytes(self.prefix_cache.nbytes)
        # Join the batch before the first token is reported, so observers see them running.
        self._decoding.extend(request.sequences)
        now = time.monotonic()
        self.metrics.prompt_tokens(size)
        self.metrics.first_token(now - request.enqueued_at)
        request.phases.next("generation.decode")
        for sequence in request.sequences:
            self._accept(sequence, logits, now)

    def _decode(self) -> None:
        """One token for every decoding sequence, in one run over the slot range they span.

        Other slots in that range ride along as empty rows with a pad token; their logits are
        unused. A slot mid-prefill among them keeps its entries: the one entry the pad token
        overwrites (its first) is put back after the run.
        """
        decoding = {s.slot: s for s in self._decoding}
        first, end = min(decoding), max(decoding) + 1
        input_ids = np.full((end - first, 1), self.tokenizer.pad_token_id, np.int64)
        past_lengths = self.kv.lengths[first:end].copy()
        for slot, sequence in decoding.items():
            input_ids[slot - first, 0] = sequence.last_token
        riders = [slot for slot in range(first, end) if slot not in decoding]
        past_lengths[[slot - first for slot in riders]] = 0
        kept = self.kv.first_entries(riders)
        logits = self.model.forward(self.kv, first, input_ids, past_lengths)
        self.kv.restore_first_entries(riders, kept)
        self.metrics.batch_size(len(self._decoding))
        now = time.monotonic()
        for sequence in self._decoding:
            self.kv.lengths[sequence.slot] += 1
            if not sequence.cancelled:
                self.metrics.inter_token(now - sequence.last_token_at)
                self._accept(sequence, logits[sequence.slot - first], now)

    def _accept(self, sequence: _Sequence, logits: np.ndarray, now: float) -> None:
        sequence.last_token_at = now
        # The sampled token goes at the slot's length: is that the slot's last position?
        context_full = self.kv.lengths[sequence.slot] + 1 >= self.context_length
        finish = sequence.accept(logits, self.tokenizer.eos_token_ids, context_full)
        self.metrics.generated_token()
        if finish is not None:
            self.metrics.finished(finish.value)
