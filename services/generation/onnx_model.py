"""An ONNX Runtime session over an optimum `text-generation-with-past` export."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

_PAST_INPUT = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def select_providers(device: str) -> list[str]:
    """`cuda` asks for the CUDA execution provider (falling back to CPU); `cpu` forces CPU."""
    available = ort.get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            logger.warning("CUDA requested but not available (have %s); using CPU", available)
            return ["CPUExecutionProvider"]
        if hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu finds the CUDA and cuDNN libraries that pip installed (the
            # nvidia-* wheels of its [cuda,cudnn] extras) only when asked to load them.
            ort.preload_dlls()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxCausalLM:
    """Forward passes of a decoder with an explicit KV cache [batch, kv_heads, length, head_dim]."""

    def __init__(self, model_path: Path, providers: list[str], intra_op_threads: int = 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads steal the cores the other processes need on a busy machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
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
