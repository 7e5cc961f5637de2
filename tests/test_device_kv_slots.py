"""The GPU path's pieces that run without a GPU.

KV slots in device memory (DeviceKvSlots) are addressed and copied through a DeviceMemory;
CudaMemory is the CUDA runtime's, which needs a GPU this machine does not have. HostMemory
below gives DeviceKvSlots host memory behind the same calls, so its address arithmetic and
strided copies run for real, against plain KvSlots, and so does the engine over them (bound
by address, device "cpu"). The graph made for CUDA (fp16 activations, KV and logits) runs
under ONNX Runtime's CPU provider. Not run here: the CUDA runtime calls themselves.
"""

from __future__ import annotations

import copy
import ctypes
import mmap
from pathlib import Path

import numpy as np
import pytest

from services.common.domain import ChatMessage, SamplingParams
from services.common.onnx_runtime import select_providers
from services.common.records import chat_model_file
from services.generation.device_kv_slots import DeviceKvSlots
from services.generation.engine import GenerationEngine
from services.generation.kv_slots import KvSlots
from services.generation.onnx_model import OnnxCausalLM
from services.generation.prefix_cache import PrefixCache
from services.generation.sampler import ResolvedSampling


class HostMemory:
    """DeviceMemory over host memory: what CudaMemory does, with memmove for cudaMemcpy2D."""

    device_type = "cpu"

    def __init__(self):
        self._buffers: dict[int, mmap.mmap] = {}

    def malloc_zeroed(self, nbytes: int) -> int:
        buffer = mmap.mmap(-1, nbytes)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        self._buffers[address] = buffer
        return address

    def free(self, address: int) -> None:
        self._buffers.pop(address)

    def copy_2d(self, dst, dst_pitch, src, src_pitch, width, height) -> None:
        assert width <= dst_pitch and width <= src_pitch
        for row in range(height):
            ctypes.memmove(dst + row * dst_pitch, src + row * src_pitch, width)


SHAPE = {"num_arrays": 3, "kv_heads": 2, "head_dim": 4, "slots": 4, "max_len": 32}


def block(tokens: int, seed: int, dtype) -> list[np.ndarray]:
    """Random entries per cache array, [kv_heads, tokens, head_dim]."""
    rng = np.random.default_rng(seed)
    shape = (SHAPE["kv_heads"], tokens, SHAPE["head_dim"])
    return [rng.standard_normal(shape).astype(dtype) for _ in range(SHAPE["num_arrays"])]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_device_slots_hold_and_move_entries_exactly_as_host_slots(dtype):
    memory = HostMemory()
    host, device = KvSlots(**SHAPE, dtype=dtype), DeviceKvSlots(memory, **SHAPE, dtype=dtype)
    for kv in (host, device):
        kv.load(1, [block(10, 1, dtype)])
        kv.load(2, [block(7, 2, dtype)])
        # Blocks after the first land after it (a prefix cache hit of several blocks).
        kv.load(3, [block(5, 3, dtype), block(3, 4, dtype)])
        # n completions of one prompt: its entries copied to the other slots.
        kv.copy(1, 0, 6)
    for slot, tokens in ((0, 6), (1, 10), (2, 7), (3, 8)):
        assert host.lengths[slot] == device.lengths[slot] == tokens
        pairs = zip(device.entries(slot, 0, tokens), host.entries(slot, 0, tokens), strict=True)
        assert all(np.array_equal(ours, theirs) for ours, theirs in pairs)
    # A slot's address is its row of each buffer: IO binding reads from there.
    assert device.address(1, 2) - device.address(1, 0) == 2 * 2 * 32 * 4 * np.dtype(dtype).itemsize
    # A rider's first entry is kept and put back, whatever the run wrote there.
    kept = device.first_entries([1, 2])
    assert all(np.array_equal(k, h) for k, h in zip(kept, host.first_entries([1, 2]), strict=True))
    device.copy(3, 1, 1)
    device.copy(3, 2, 1)
    device.restore_first_entries([1, 2], kept)
    for slot in (1, 2):
        pairs = zip(device.entries(slot, 0, 7), host.entries(slot, 0, 7), strict=True)
        assert all(np.array_equal(ours, theirs) for ours, theirs in pairs)
    device.close()
    assert not memory._buffers


def with_device_slots(model: OnnxCausalLM) -> OnnxCausalLM:
    """The same session, its KV slots in DeviceKvSlots over host memory."""
    device_model = copy.copy(model)
    device_model.device_memory = HostMemory()
    return device_model


SYSTEM = (
    "You are the archivist of the harbour town of Velmora. Its lighthouse was built of grey "
    "granite in 1791, its fish market opens at five every morning, and its mayor is elected "
    "every four years by the members of the guilds. Answer briefly, only from these facts."
)


async def greedy(engine: GenerationEngine, prompt_ids: list[int], n: int, max_tokens: int):
    params = ResolvedSampling.resolve(SamplingParams(temperature=0.0, max_tokens=max_tokens), 4096)
    tokens: list[list[int]] = [[] for _ in range(n)]
    async for event in engine.generate(prompt_ids, [params] * n):
        tokens[event.index].extend(event.token_ids)
    return tokens


async def scenario(engine: GenerationEngine, loaded) -> list:
    """Everything that moves KV entries: prefix cache store and hit, n completions of one
    prompt, and a short sequence leaving a gap that rides along while others decode."""
    import asyncio

    def ask(question: str) -> list[int]:
        return loaded.render_prompt([ChatMessage("system", SYSTEM), ChatMessage("user", question)])[
            1
        ]

    first = await greedy(engine, ask("When was the lighthouse built?"), n=1, max_tokens=12)
    together = await asyncio.gather(
        greedy(engine, ask("Who elects the mayor?"), n=2, max_tokens=16),
        greedy(engine, ask("When does the market open?"), n=1, max_tokens=3),
        greedy(engine, ask("What is the lighthouse made of?"), n=1, max_tokens=16),
    )
    return [first, *together]


async def test_the_engine_over_device_slots_gives_the_host_slots_tokens(loaded_chat_model):
    model, tokenizer = loaded_chat_model.engine.model, loaded_chat_model.tokenizer
    context = loaded_chat_model.context_length
    engines = [
        GenerationEngine(m, tokenizer, context, kv_slots=6, prefix_cache=PrefixCache(2**26, 16))
        for m in (model, with_device_slots(model))
    ]
    try:
        host, device = [await scenario(engine, loaded_chat_model) for engine in engines]
        assert isinstance(engines[1].kv, DeviceKvSlots)
        assert engines[1].prefix_cache.saved_tokens >= 64  # the system prompt came from it
        assert device == host
    finally:
        for engine in engines:
            engine.close()


async def test_the_graph_made_for_cuda_decodes_in_fp16_slots(loaded_chat_model, chat_model):
    path = Path(chat_model.artifact_dir) / chat_model_file(chat_model.graph, "int4", "cuda")
    model = with_device_slots(OnnxCausalLM(path, select_providers("cpu")))
    assert model.kv_dtype is np.float16
    engine = GenerationEngine(model, loaded_chat_model.tokenizer, 2048, kv_slots=4)
    try:
        ids = loaded_chat_model.render_prompt(
            [ChatMessage("user", "What is the capital of France?")]
        )[1]
        [alone] = await greedy(engine, ids, n=1, max_tokens=12)
        assert "Paris" in loaded_chat_model.tokenizer.decode(alone)
        # Its other completion, copied from the same prompt, decodes the same in one batch.
        assert await greedy(engine, ids, n=2, max_tokens=12) == [alone, alone]
    finally:
        engine.close()
