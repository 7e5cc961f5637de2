"""An ONNX Runtime session over an optimum `text-generation-with-past` export."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from services.common.onnx_runtime import open_session

_PAST_INPUT = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxCausalLM:
    """Forward passes of a decoder with an explicit KV cache [batch, kv_heads, length, head_dim]."""

    def __init__(self, model_path: Path, providers: list[str], intra_op_threads: int = 0):
        self.session = open_session(model_path, providers, intra_op_threads)
        self.provider = self.session.get_providers()[0]
        past = [i for i in self.session.get_inputs() if _PAST_INPUT.fullmatch(i.name)]
        if not past:
            raise ValueError(f"{model_path} has no past_key_values inputs (export with-past)")
        self.num_layers = len(past) // 2
        _, self.num_kv_heads, _, self.head_dim = past[0].shape
        self.kv_dtype = _ORT_DTYPES[past[0].type]
        self._past_names = [
            f"past_key_values.{layer}.{kind}"
            for layer in range(self.num_layers)
            for kind in ("key", "value")
        ]
        self._output_names = ["logits"] + [
            name.replace("past_key_values", "present") for name in self._past_names
        ]
        self.vocab_size = self.session.get_outputs()[0].shape[-1]
        self._uses_position_ids = any(i.name == "position_ids" for i in self.session.get_inputs())

    def empty_cache(self, batch_size: int) -> list[np.ndarray]:
        shape = (batch_size, self.num_kv_heads, 0, self.head_dim)
        return [np.zeros(shape, self.kv_dtype) for _ in self._past_names]

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        cache: list[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Returns the last position's logits [batch, vocab] and the grown cache.

        `attention_mask` covers cache plus new tokens; zeros mark left padding.
        """
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._uses_position_ids:
            feeds["position_ids"] = position_ids
        feeds.update(zip(self._past_names, cache, strict=True))
        logits, *present = self.session.run(self._output_names, feeds)
        return logits[:, -1, :], present
