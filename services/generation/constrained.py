"""Constrained decoding with llguidance: a grammar per sequence, as a token mask on its logits.

`GrammarCompiler` (one per model) turns an `OutputConstraint` (JSON object, JSON schema, regex,
a choice of strings) into a `Grammar`, checked and cached per constraint; compiling blocks,
so callers run it off the event loop and the decode thread. Each sequence gets its own
`GrammarMatcher` from the grammar: before sampling, `mask` keeps only the tokens the grammar
allows in its logits row; after sampling, `consume` advances it; `done` says the grammar is
complete (nothing but end-of-sequence may follow).

JSON output (and forced tool calls) caps each run of digits outside strings at 16, as
llama.cpp's JSON grammars do: an unbounded number is where a small model, forced to stay inside
the grammar, loops ("population": 1111... until max_tokens).

Why llguidance rather than xgrammar (measured on this CPU, SmolLM2's 49k vocabulary;
docs/structured-output.md): it needs only numpy (xgrammar's mask API takes torch tensors, and
its wheel pulls torch-sized dependencies into the generation image, which has neither), it
compiles a schema in ~2 ms (xgrammar ~18 ms), and its mask per row and step is in the same
tens of microseconds.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import llguidance
import numpy as np

from services.common.domain import OutputConstraint
from services.common.errors import InvalidArgument

logger = logging.getLogger(__name__)

# Compact JSON with OpenAI's separators: no free whitespace, so a small model cannot loop on it.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_CACHE_SIZE = 128
# Digits in a row outside strings in JSON output (integral, fraction and exponent parts each):
# llama.cpp's JSON-schema grammars allow 16 as well.
JSON_DIGIT_RUN_CAP = 16


def _json_output(constraint: OutputConstraint) -> bool:
    """JSON output: a JSON response format, or forced tool calls (JSON arguments)."""
    return constraint.kind in ("json_object", "json_schema") or constraint.origin == "tool_choice"


def _byte_level(node) -> bool:
    """Whether a tokenizer.json component (or a Sequence of them) is byte-level."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel":
        return True
    parts = node.get("pretokenizers") or node.get("decoders") or []
    return any(_byte_level(part) for part in parts)


def llguidance_tokenizer_json(tokenizer_json: str) -> str:
    """The tokenizer as llguidance must read it. llguidance recognizes byte-level BPE by a
    top-level ByteLevel decoder; GGUF conversions write a Sequence around it (SmolLM2's:
    ByteFallback, Fuse, Replace, ByteLevel), which it would read as plain strings, so that
    "Ġ" would not be a space and the masks would be wrong."""
    config = json.loads(tokenizer_json)
    decoder = config.get("decoder")
    if _byte_level(config.get("pre_tokenizer")) and (decoder or {}).get("type") != "ByteLevel":
        config["decoder"] = {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        }
    return json.dumps(config, ensure_ascii=False)


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def grammar_source(constraint: OutputConstraint) -> str:
    """llguidance's grammar for a constraint (unchecked; GrammarCompiler checks it)."""
    kind, spec = constraint.kind, constraint.spec
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema(
            {"type": "object"}, defaults=_JSON_OPTIONS
        )
    if kind == "json_schema":
        try:
            schema = json.loads(spec)
        except json.JSONDecodeError as error:
            raise InvalidArgument(
                f"The JSON schema is not JSON: {error}", param=constraint.param
            ) from error
        if not isinstance(schema, dict):
            raise InvalidArgument("The JSON schema must be an object.", param=constraint.param)
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec)
    if kind == "choice":
        choices = json.loads(spec)
        return llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(_lark_string(c) for c in choices)
        )
    if kind == "lark":
        return llguidance.LLMatcher.grammar_from_lark(spec)
    raise InvalidArgument(f"Unknown output constraint `{kind}`.", param=constraint.param)


class _TokenDigits:
    """Each token's bytes and how many ASCII digits it starts with (one table per model)."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, vocab_size: int):
        self.token_bytes = [tokenizer.decode_bytes([token]) for token in range(vocab_size)]
        self.leading = np.array(
            [len(data) - len(data.lstrip(b"0123456789")) for data in self.token_bytes],
            dtype=np.int32,
        )
        self.most = int(self.leading.max(initial=0))


class _JsonDigitRuns:
    """Where a JSON text stands: inside a string or not, and the digits it ends with."""

    def __init__(self, digits: _TokenDigits):
        self.digits = digits
        self.in_string = False
        self.escaped = False
        self.run = 0

    def forbidden(self) -> np.ndarray | None:
        """Tokens that would carry the current run of digits past the cap, if any could."""
        if self.in_string or self.run + self.digits.most <= JSON_DIGIT_RUN_CAP:
            return None
        return self.digits.leading > JSON_DIGIT_RUN_CAP - self.run

    def consume(self, token: int) -> None:
        for byte in self.digits.token_bytes[token]:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:  # quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
                self.run = 0
            elif 0x30 <= byte <= 0x39:
                self.run += 1
            else:
                self.run = 0


class Grammar:
    """A checked grammar; hands each sequence its own matcher."""

    def __init__(
        self,
        template: llguidance.LLMatcher,
        vocab_size: int,
        json_digits: _TokenDigits | None = None,
    ):
        self._template = template
        self._lock = threading.Lock()
        self.vocab_size = vocab_size
        self._json_digits = json_digits

    def matcher(self) -> GrammarMatcher:
        with self._lock:
            matcher = self._template.deep_copy()
        runs = _JsonDigitRuns(self._json_digits) if self._json_digits is not None else None
        return GrammarMatcher(matcher, self.vocab_size, runs)


class GrammarMatcher:
    """One sequence's position in its grammar; touched only by the decode thread."""

    def __init__(
        self,
        matcher: llguidance.LLMatcher,
        vocab_size: int,
        json_digit_runs: _JsonDigitRuns | None = None,
    ):
        self._matcher = matcher
        self._bitmask = np.full(((vocab_size + 31) // 32,), -1, dtype=np.int32)
        self._digit_runs = json_digit_runs

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of the logits row with every token the grammar forbids at -inf."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        allowed = np.unpackbits(
            self._bitmask.view(np.uint8), bitorder="little", count=logits.shape[0]
        ).view(bool)
        if not allowed.any():
            # Only a matcher in its error state allows nothing; `done` then ends the sequence.
            logger.warning("grammar allows no token: %s", self._matcher.get_error())
            return logits
        forbidden = self._digit_runs.forbidden() if self._digit_runs is not None else None
        if forbidden is not None:
            capped = allowed & ~forbidden
            # A schema whose bounds need more digits keeps them.
            if capped.any():
                allowed = capped
        return np.where(allowed, logits, np.float32(-np.inf))

    def consume(self, token: int) -> None:
        # A token outside the mask leaves the matcher in its error state; `done` then ends
        # the sequence.
        self._matcher.consume_token(token)
        if self._digit_runs is not None:
            self._digit_runs.consume(token)

    @property
    def done(self) -> bool:
        """The grammar is complete (or broken): nothing but end-of-sequence may follow."""
        return self._matcher.is_stopped() or self._matcher.is_error()


@dataclass(frozen=True)
class _Key:
    kind: str
    spec: str
    json_output: bool


class GrammarCompiler:
    """Compiles and caches one model's grammars; thread-safe, blocking (run it in a thread)."""

    def __init__(self, tokenizer_json: Path, vocab_size: int, eos_token_ids: frozenset[int]):
        self._tokenizer_json = tokenizer_json
        self._vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._digits: _TokenDigits | None = None
        self._cache: collections.OrderedDict[_Key, Grammar] = collections.OrderedDict()
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Builds llguidance's view of the tokenizer now (0.3-0.7 s here) and the digit
        table (~40 ms), so the first constrained request does not wait for them."""
        with self._lock:
            self._json_digits()

    def _json_digits(self) -> _TokenDigits:
        # Built once (caller holds the lock).
        if self._digits is None:
            self._digits = _TokenDigits(self._llg_tokenizer(), self._vocab_size)
        return self._digits

    def _llg_tokenizer(self) -> llguidance.LLTokenizer:
        # Built once (caller holds the lock), then shared by every grammar.
        if self._tokenizer is None:
            self._tokenizer = llguidance.LLTokenizer(
                llguidance_tokenizer_json(self._tokenizer_json.read_text()),
                n_vocab=self._vocab_size,
                eos_token=self._eos or None,
            )
        return self._tokenizer

    def compile(self, constraint: OutputConstraint) -> Grammar:
        """The constraint's grammar; InvalidArgument naming what is unsupported or invalid."""
        json_output = _json_output(constraint)
        key = _Key(constraint.kind, constraint.spec, json_output)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            tokenizer = self._llg_tokenizer()
            digits = self._json_digits() if json_output else None
        try:
            source = grammar_source(constraint)
            matcher = llguidance.LLMatcher(tokenizer, source, log_level=0)
        except InvalidArgument:
            raise
        except Exception as error:  # noqa: BLE001 - the client's grammar, whatever it holds
            raise InvalidArgument(
                f"The {constraint.description} cannot be enforced: {error}",
                param=constraint.param,
            ) from error
        if matcher.is_error():
            raise InvalidArgument(
                f"The {constraint.description} cannot be enforced: {matcher.get_error()}",
                param=constraint.param,
            )
        grammar = Grammar(matcher, self._vocab_size, digits)
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar
