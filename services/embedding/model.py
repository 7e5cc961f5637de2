"""One embedding model: tokenizer, ONNX Runtime forward pass, pooling and normalization.

Pooling and normalization follow the sentence-transformers configs exported beside the model
(`1_Pooling/config.json`, `modules.json`); a plain checkpoint gets mean pooling, as
sentence-transformers gives it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from services.common.domain import TokenSpans
from services.common.errors import InvalidArgument
from services.common.onnx_runtime import open_session
from services.common.records import ModelRecord

_POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_TOKEN_OUTPUTS = ("token_embeddings", "last_hidden_state")


@dataclass(frozen=True)
class ModelInput:
    """Token ids ready for the model (special tokens included)."""

    ids: list[int]
    truncated: bool = False


def _read_json(path: Path) -> dict | list:
    return json.loads(path.read_text()) if path.exists() else {}


def _pooling(artifact_dir: Path) -> str:
    config = _read_json(artifact_dir / "1_Pooling" / "config.json")
    modes = [mode for key, mode in _POOLING_MODES.items() if config.get(key)]
    if len(modes) > 1:
        raise InvalidArgument(f"Combined pooling modes {modes} are not supported.")
    return modes[0] if modes else "mean"


def _normalizes(artifact_dir: Path) -> bool:
    modules = _read_json(artifact_dir / "modules.json")
    return any(m.get("type", "").endswith("Normalize") for m in modules)


class EmbeddingModel:
    def __init__(self, record: ModelRecord, providers: list[str], intra_op_threads: int = 0):
        artifact_dir = Path(record.artifact_dir)
        self.name = record.name
        self.max_tokens = record.context_length
        self.pooling = _pooling(artifact_dir)
        self.normalized = _normalizes(artifact_dir)
        # The exported tokenizer.json carries fixed padding and truncation; we batch ourselves.
        self.tokenizer = Tokenizer.from_file(str(artifact_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self._prefix, self._suffix = self._special_tokens()
        config = _read_json(artifact_dir / "tokenizer_config.json")
        pad = self.tokenizer.token_to_id(config.get("pad_token") or "")
        self.pad_id = pad if pad is not None else 0

        self.session = open_session(artifact_dir / "model.onnx", providers, intra_op_threads)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._pooled_output = "sentence_embedding" if "sentence_embedding" in outputs else None
        token_output = next((name for name in _TOKEN_OUTPUTS if name in outputs), None)
        if self._pooled_output is None and token_output is None:
            raise InvalidArgument(f"{artifact_dir}/model.onnx has no token embeddings output.")
        self._token_output = token_output
        output = outputs[self._pooled_output or token_output]
        self.dimensions = int(output.shape[-1])

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a text's own tokens ([CLS]/[SEP])."""
        encoding = self.tokenizer.encode("a", add_special_tokens=True)
        content = [i for i, seq in enumerate(encoding.sequence_ids) if seq is not None]
        return encoding.ids[: content[0]], encoding.ids[content[-1] + 1 :]

    @property
    def max_content_tokens(self) -> int:
        return self.max_tokens - len(self._prefix) - len(self._suffix)

    def spans(self, texts: list[str]) -> list[TokenSpans]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [
            TokenSpans(e.ids, [s for s, _ in e.offsets], [end for _, end in e.offsets])
            for e in encodings
        ]

    def prepare_text(self, text: str, truncate: bool, index: int) -> ModelInput:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, truncate, index)

    def prepare_tokens(self, ids: list[int], truncate: bool, index: int) -> ModelInput:
        if any(token >= self.vocab_size for token in ids):
            raise InvalidArgument(
                f"input[{index}] holds a token id outside the vocabulary of {self.name} "
                f"(size {self.vocab_size}).",
                param="input",
            )
        return self._wrap(list(ids), truncate, index)

    def _wrap(self, ids: list[int], truncate: bool, index: int) -> ModelInput:
        room = self.max_content_tokens
        truncated = len(ids) > room
        if truncated and not truncate:
            total = len(ids) + len(self._prefix) + len(self._suffix)
            raise InvalidArgument(
                f"This model's maximum context length is {self.max_tokens} tokens, however "
                f"input[{index}] has {total} tokens. Please reduce the length of the input.",
                code="context_length_exceeded",
                param="input",
            )
        return ModelInput(self._prefix + ids[:room] + self._suffix, truncated)

    def forward(self, inputs: list[list[int]]) -> np.ndarray:
        """Embeds a batch of prepared inputs: [batch, dimensions], pooled and normalized."""
        length = max(len(ids) for ids in inputs)
        input_ids = np.full((len(inputs), length), self.pad_id, np.int64)
        mask = np.zeros((len(inputs), length), np.int64)
        for row, ids in enumerate(inputs):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        if self._pooled_output:
            (vectors,) = self.session.run([self._pooled_output], feeds)
        else:
            (tokens,) = self.session.run([self._token_output], feeds)
            vectors = pool(tokens, mask, self.pooling)
            if self.normalized:
                vectors = normalize(vectors)
        return vectors.astype(np.float32, copy=False)


def pool(tokens: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pools token vectors [batch, length, dim] over the unmasked positions."""
    weights = mask[:, :, None].astype(tokens.dtype)
    if mode == "cls":
        return tokens[:, 0]
    if mode == "max":
        return np.where(weights > 0, tokens, -np.inf).max(axis=1)
    summed = (tokens * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(counts)
    return summed / counts


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)
