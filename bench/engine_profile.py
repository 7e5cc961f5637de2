"""Where a decode step of the chat model goes: ONNX Runtime's profiler, kernel time by operator.

The default chat model's graph (as `make run` exports it) runs decode steps over KV slots the
way the engine does (services/generation/onnx_model.py): rows of a batch each hold `--context`
tokens of a random prompt, and every step appends one token to each. Prints the median step
time and each operator's share of kernel time, per (batch, context) case:

  .venv/bin/python -m bench.engine_profile [--weights int4] [--kv-cache float] [--spin-us 0]
                                           [--cases 1x128,1x4096,8x128]

Then the time to prefill a PREFILL_TOKENS-token prompt in the engine's chunks, and the memory
bound: the process's resident memory with every entry of MEMORY_SLOTS slots of MEMORY_CONTEXT
tokens written (llama-server's `-np 8 -c 65536` preallocates as much).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.common.onnx_runtime import select_providers  # noqa: E402
from services.common.records import KV_CACHES, ModelKind, chat_model_file  # noqa: E402
from services.generation.onnx_model import OnnxCausalLM, session_environment  # noqa: E402
from services.generation.settings import GenerationSettings  # noqa: E402
from services.registry.defaults import DEFAULT_CHAT_MODEL, smollm2_gguf  # noqa: E402
from services.registry.importer import ModelImporter  # noqa: E402
from services.registry.settings import RegistrySettings  # noqa: E402

STEPS = 20
TOP_OPERATORS = 8
MEMORY_SLOTS, MEMORY_CONTEXT = 8, 8192
# The engine's default chunk (GENERATION_MAX_PREFILL_TOKENS).
PREFILL_TOKENS, PREFILL_CHUNK = 4096, 512


def fill(model: OnnxCausalLM, rows: int, context: int):
    kv = model.allocate(rows, context + 2 * STEPS + 1)
    rng = np.random.default_rng(0)
    for row in range(rows):
        model.forward(kv, row, rng.integers(100, 40000, (1, context)), np.zeros(1, np.int64))
        kv.lengths[row] = context
    return kv


def steps(model: OnnxCausalLM, kv, rows: int) -> list[float]:
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        model.forward(kv, 0, np.ones((rows, 1), np.int64), kv.lengths[:rows])
        times.append(time.perf_counter() - started)
        kv.lengths[:rows] += 1
    return times


def operator_shares(profile: Path) -> dict[str, float]:
    kernel: dict[str, float] = {}
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            operator = event["args"]["op_name"]
            kernel[operator] = kernel.get(operator, 0.0) + event["dur"]
    total = sum(kernel.values())
    return {op: time_ / total for op, time_ in sorted(kernel.items(), key=lambda i: -i[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", choices=("int4", "fp32"), default="int4")
    parser.add_argument(
        "--kv-cache", choices=KV_CACHES, default=GenerationSettings.model_fields["kv_cache"].default
    )
    parser.add_argument(
        "--spin-us", type=int, default=GenerationSettings.model_fields["spin_us"].default
    )
    parser.add_argument("--cases", default="1x128,1x1024,1x4096,8x128,8x1024")
    args = parser.parse_args()
    record = ModelImporter(RegistrySettings().cache_dir).import_model(
        DEFAULT_CHAT_MODEL, ModelKind.CHAT, smollm2_gguf(), lambda *_: None
    )
    path = Path(record.artifact_dir) / chat_model_file(
        record.graph, args.weights, kv_cache=args.kv_cache
    )
    print(f"{path} ({record.graph.name} graph), {os.cpu_count()} cores")
    for case in args.cases.split(","):
        rows, context = (int(part) for part in case.split("x"))
        model = OnnxCausalLM(path, select_providers("cpu"), spin_us=args.spin_us)
        kv = fill(model, rows, context)
        median_ms = statistics.median(steps(model, kv, rows)) * 1e3
        with tempfile.TemporaryDirectory() as scratch:
            options = model.session.get_session_options()  # the same, profiled
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(scratch) / "profile")
            with session_environment(path):
                model.session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            kv.bindings.clear()  # they belong to the session they were made by
            steps(model, kv, rows)
            shares = operator_shares(Path(model.session.end_profiling()))
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:TOP_OPERATORS])
        print(f"batch {rows}, context {context}: step {median_ms:.1f} ms (median); {top}")
    print(prefill_time(path, args.spin_us))
    print(memory_bound(path))


def prefill_time(path: Path, spin_us: int) -> str:
    model = OnnxCausalLM(path, select_providers("cpu"), spin_us=spin_us)
    kv = model.allocate(1, PREFILL_TOKENS)
    ids = np.random.default_rng(0).integers(100, 40000, (1, PREFILL_TOKENS))
    started = time.perf_counter()
    for start in range(0, PREFILL_TOKENS, PREFILL_CHUNK):
        model.forward(kv, 0, ids[:, start : start + PREFILL_CHUNK], np.array([start]))
    seconds = time.perf_counter() - started
    return f"prefill: {PREFILL_TOKENS} tokens in {PREFILL_CHUNK}-token chunks in {seconds:.1f} s"


def memory_bound(path: Path) -> str:
    """This process's RSS after a decode step of a fresh session, then with every KV entry of
    MEMORY_SLOTS x MEMORY_CONTEXT written."""
    model = OnnxCausalLM(path, select_providers("cpu"))
    kv = fill(model, 1, 128)
    steps(model, kv, 1)
    before = psutil.Process().memory_info().rss
    full = model.allocate(MEMORY_SLOTS, MEMORY_CONTEXT)
    for array in full.arrays:
        array.fill(1)
    after = psutil.Process().memory_info().rss
    kind = np.dtype(model.kv_dtype).name
    return (
        f"memory: {MEMORY_SLOTS} slots x {MEMORY_CONTEXT} tokens of {kind} "
        f"KV = {(after - before) / 2**20:.0f} MiB; process RSS {after / 2**20:.0f} MiB with them"
    )


if __name__ == "__main__":
    main()
