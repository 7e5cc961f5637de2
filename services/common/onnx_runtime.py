"""ONNX Runtime sessions as every model service opens them."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

logger = logging.getLogger(__name__)


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


def open_session(
    model_path: Path, providers: list[str], intra_op_threads: int = 0
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads steal the cores the other processes need on a busy machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), options, providers=providers)
