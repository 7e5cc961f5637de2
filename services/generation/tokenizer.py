"""Tokenization with the `tokenizers` library and UTF-8-safe incremental detokenization."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer

# Prompt tokens kept as decoding context, so the first generated word keeps its leading space.
_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")


def _token_text(value) -> str:
    # tokenizer_config.json stores special tokens either as strings or as AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable stand-in character -> the byte it encodes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    stand_ins = dict(zip(printable, printable, strict=True))
    extra = 0
    for byte in range(256):
        if byte not in stand_ins:
            stand_ins[byte] = 256 + extra
            extra += 1
    return {chr(char): byte for byte, char in stand_ins.items()}


class TextTokenizer:
    def __init__(self, artifact_dir: Path):
        tokenizer_json = (artifact_dir / "tokenizer.json").read_text()
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._byte_level = _byte_level_alphabet() if '"ByteLevel"' in tokenizer_json else None
        # SentencePiece-style vocabularies spell bytes outside their pieces as <0xNN> tokens.
        self._byte_fallback = '"ByteFallback"' in tokenizer_json
        config_path = artifact_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        eos_ids = set()
        if self.eos_token and (token_id := self._tokenizer.token_to_id(self.eos_token)) is not None:
            eos_ids.add(token_id)
        generation_path = artifact_dir / "generation_config.json"
        if generation_path.exists():
            configured = json.loads(generation_path.read_text()).get("eos_token_id")
            eos_ids.update(configured if isinstance(configured, list) else [configured])
        eos_ids.discard(None)
        self.eos_token_ids = frozenset(eos_ids)
        self.pad_token_id = min(self.eos_token_ids) if self.eos_token_ids else 0

    @property
    def special_tokens(self) -> dict[str, str]:
        return {"bos_token": self.bos_token, "eos_token": self.eos_token}

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # By default none: the chat template already wrote every special token the model needs.
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_strs(self, token_ids: list[int]) -> list[str]:
        """Each token as the vocabulary spells it ("Ġworld" in a byte-level BPE)."""
        return [self._tokenizer.id_to_token(t) or "" for t in token_ids]

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (part of a character, for some tokens)."""
        piece = self._tokenizer.id_to_token(token_id) or ""
        if self._byte_level and all(char in self._byte_level for char in piece):
            return bytes(self._byte_level[char] for char in piece)
        if self._byte_fallback and (byte := _BYTE_TOKEN.fullmatch(piece)):
            return bytes([int(byte.group(1), 16)])
        return self._tokenizer.decode([token_id], skip_special_tokens=False).encode()


class IncrementalDetokenizer:
    """Turns a growing token sequence into text deltas that never split a character.

    A byte-level BPE token can hold part of a multi-byte character; such a tail decodes to
    U+FFFD, so its text is held back until the following tokens complete it.
    """

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: list[int]):
        self._tokenizer = tokenizer
        self._tokens = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)

    def push(self, token_id: int) -> str:
        self._tokens.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._tokens[self._prefix_offset : self._read_offset])
        full_text = decode(self._tokens[self._prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith(_REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._tokens)
            return full_text[len(prefix_text) :]
        return ""
