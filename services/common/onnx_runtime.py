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
    model_path: Path,
    providers: list[str],
    intra_op_threads: int = 0,
    spin_us: int = 0,
    memory_arena: bool = True,
) -> ort.InferenceSession:
    """`spin_us`: how long an idle worker thread spins before it sleeps (0: it sleeps at once);
    spinning wakes it faster for the next operator and holds its core meanwhile.
    `memory_arena`: keep freed CPU buffers for reuse (an arena never returns them: off for
    graphs whose buffers keep growing, run after run)."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if spin_us > 0 else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if spin_us > 0:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    return ort.InferenceSession(str(model_path), options, providers=providers)
