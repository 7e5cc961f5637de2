"""Forward passes of an exported decoder over KV slots.

Two graph kinds run here, told apart by their inputs:
- onnxruntime-genai builder graphs (no `position_ids`): GroupQueryAttention reads and appends
  to one shared past/present buffer, so the slot rows are bound in place with IO binding and
  nothing is copied;
- optimum `text-generation-with-past` graphs (the fallback for other architectures): the past
  goes in as a copy of the rows and the new entries are written back into the slots.
On CUDA, builder graphs keep their slots in device memory (DeviceKvSlots), bound the same way.
A builder graph with an int8 cache decodes that way too, and prefills multi-token chunks with
its prefill graph (services/registry/graph.py: int8_kv_prefill), which attends in float and
returns the chunk's int8 entries for the slot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from services.common.onnx_runtime import open_session
from services.common.records import INT8_KV_ENTRIES, INT8_KV_GRAPH, INT8_KV_PREFILL_GRAPH
from services.generation.device_kv_slots import DeviceKvSlots
from services.generation.device_memory import CudaMemory, DeviceMemory
from services.generation.kv_slots import KvSlots

logger = logging.getLogger(__name__)

_PAST_INPUT = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}
# ONNX Runtime reads this as it creates a session's GroupQueryAttention kernels. On an int8
# cache its flash kernel decodes slower than the direct one (SmolLM2, 2 cores: 16 rows of 256
# tokens 310 vs 360 tok/s, one 7.5k-token row 27 vs 36 tok/s); on a float cache it is faster.
_NO_FLASH_ATTENTION = "ORT_GQA_DISABLE_FLASH_ATTENTION"
_session_environment = threading.Lock()


class OnnxCausalLM:
    """A decoder with a KV cache [batch, kv_heads, length, head_dim] per layer and key/value."""

    def __init__(
        self,
        model_path: Path,
        providers: list[str],
        intra_op_threads: int = 0,
        spin_us: int = 0,
    ):
        with session_environment(model_path):
            self.session = open_session(model_path, providers, intra_op_threads, spin_us)
        self.prefill_session = _int8_prefill_session(
            Path(model_path), providers, intra_op_threads, spin_us
        )
        self.provider = self.session.get_providers()[0]
        inputs = self.session.get_inputs()
        past = [i for i in inputs if _PAST_INPUT.fullmatch(i.name)]
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
        self._present_names = [
            name.replace("past_key_values", "present") for name in self._past_names
        ]
        self._entry_names = [
            name.replace("past_key_values", INT8_KV_ENTRIES) for name in self._past_names
        ]
        logits = next(o for o in self.session.get_outputs() if o.name == "logits")
        self.vocab_size = logits.shape[-1]
        self._logits_dtype = _ORT_DTYPES[logits.type]
        # Builder graphs take positions from the mask; only optimum's take them explicitly.
        self.shares_kv_buffer = not any(i.name == "position_ids" for i in inputs)
        # On CUDA, a shared-buffer graph keeps its KV slots in device memory; the optimum
        # fallback copies its past in on every run, so its slots stay on the host.
        on_cuda = self.provider == "CUDAExecutionProvider"
        self.device_memory: DeviceMemory | None = (
            CudaMemory() if on_cuda and self.shares_kv_buffer else None
        )

    def allocate(self, slots: int, max_len: int) -> KvSlots:
        shape = (len(self._past_names), self.num_kv_heads, self.head_dim, slots, max_len)
        if self.device_memory is not None:
            return DeviceKvSlots(self.device_memory, *shape, self.kv_dtype)
        return KvSlots(*shape, self.kv_dtype)

    def forward(
        self, kv: KvSlots, first: int, input_ids: np.ndarray, past_lengths: np.ndarray
    ) -> np.ndarray:
        """Runs input_ids [n, S] on slots [first, first + n), whose rows hold past_lengths[i]
        entries, appends the new entries there and returns the last position's logits [n, vocab].
        """
        if self.prefill_session is not None and input_ids.shape[1] > 1:
            return self._prefill_int8(kv, first, input_ids, past_lengths)
        if self.shares_kv_buffer:
            return self._forward_in_place(kv, first, input_ids, past_lengths)
        return self._forward_copying(kv, first, input_ids, past_lengths)

    def _forward_in_place(self, kv, first, input_ids, past_lengths) -> np.ndarray:
        count, steps = input_ids.shape
        totals = past_lengths + steps
        # GroupQueryAttention only reads each row's mask sum: its length after this run.
        mask = (np.arange(int(totals.max()))[None, :] < totals[:, None]).astype(np.int64)
        key = (first, count, steps == 1)
        binding = kv.bindings.get(key)
        if binding is None:
            binding = kv.bindings[key] = self._bind_slots(kv, first, count, steps == 1)
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        self.session.run_with_iobinding(binding)
        if steps == 1:
            # Not get_outputs(): it would wrap every bound output, the KV buffers included
            # (2.6% of a decode step's thread time, py-spy).
            logits = kv.step_logits[:count]
        else:
            logits = binding.get_outputs()[0].numpy()
        return _float32(logits[:, -1, :])

    def _bind_slots(self, kv: KvSlots, first: int, count: int, decode: bool):
        """An IO binding of slots [first, first + count) as past and present (made once per
        slot range: the buffers never move). A decode binding writes the logits into rows of
        kv.step_logits; others let ONNX Runtime allocate them (their length varies)."""
        binding = self.session.io_binding()
        if decode:
            if kv.step_logits is None:
                kv.step_logits = np.empty((kv.slots, 1, self.vocab_size), self._logits_dtype)
            rows = kv.step_logits[:count]
            binding.bind_output(
                "logits", "cpu", 0, self._logits_dtype, list(rows.shape), rows.ctypes.data
            )
        else:
            # Bound first: get_outputs() follows the binding order.
            binding.bind_output("logits", "cpu")
        shape = [count, self.num_kv_heads, kv.max_len, self.head_dim]
        device = kv.device_type
        for index, (past, present) in enumerate(
            zip(self._past_names, self._present_names, strict=True)
        ):
            # Row `first` of a C-contiguous buffer: the n rows from it are contiguous too.
            address = kv.address(index, first)
            binding.bind_input(past, device, 0, self.kv_dtype, shape, address)
            binding.bind_output(present, device, 0, self.kv_dtype, shape, address)
        return binding

    def _prefill_int8(self, kv, first, input_ids, past_lengths) -> np.ndarray:
        """One row's chunk through the int8 cache's prefill graph: it reads the slot's row
        and returns the chunk's entries, written here after the run."""
        if input_ids.shape[0] != 1:
            raise ValueError("the int8 cache's prefill graph takes one row at a time")
        start, tokens = int(past_lengths[0]), input_ids.shape[1]
        binding = self.prefill_session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, start + tokens), np.int64))
        shape = [1, self.num_kv_heads, kv.max_len, self.head_dim]
        for index, past in enumerate(self._past_names):
            binding.bind_input(
                past, kv.device_type, 0, self.kv_dtype, shape, kv.address(index, first)
            )
        for name in ["logits", *self._entry_names]:
            binding.bind_output(name, "cpu")
        self.prefill_session.run_with_iobinding(binding)
        logits, *entries = (value.numpy() for value in binding.get_outputs())
        # [1, tokens, kv_heads * head_dim] -> [kv_heads, tokens, head_dim]
        shaped = [
            e.reshape(tokens, self.num_kv_heads, self.head_dim).swapaxes(0, 1) for e in entries
        ]
        kv.write(first, start, shaped)
        return _float32(logits[:, -1, :]).copy()

    def _forward_copying(self, kv, first, input_ids, past_lengths) -> np.ndarray:
        count, steps = input_ids.shape
        longest = int(past_lengths.max())
        rows = slice(first, first + count)
        # Each row's past is right-padded to the longest; the mask hides the padding.
        past_mask = np.arange(longest)[None, :] < past_lengths[:, None]
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, np.int64),
            "attention_mask": np.concatenate(
                [past_mask, np.ones((count, steps), bool)], axis=1
            ).astype(np.int64),
            "position_ids": past_lengths[:, None] + np.arange(steps)[None, :],
        }
        for name, array in zip(self._past_names, kv.arrays, strict=True):
            feeds[name] = np.ascontiguousarray(array[rows, :, :longest])
        logits, *present = self.session.run(["logits", *self._present_names], feeds)
        logits = _float32(logits)
        for array, grown in zip(kv.arrays, present, strict=True):
            for row, length in enumerate(past_lengths):
                array[first + row, :, length : length + steps] = grown[row, :, longest:]
        return logits[:, -1, :]


def _int8_prefill_session(model_path: Path, providers, intra_op_threads, spin_us):
    """A session of the prefill graph beside an int8-cache graph (None for other graphs, and
    for artifacts exported before it: their prompts prefill through the int8 graph, ~2x
    slower)."""
    if model_path.name != INT8_KV_GRAPH:
        return None
    path = model_path.with_name(INT8_KV_PREFILL_GRAPH)
    if not path.exists():
        logger.warning("%s: no int8-cache prefill graph (import the model again)", model_path)
        return None
    # Its buffers grow with the past it dequantizes, chunk after chunk: in an arena, which
    # keeps every size it ever held, they took 400 MiB more after a 7.5k-token prompt.
    return open_session(path, providers, intra_op_threads, spin_us, memory_arena=False)


@contextlib.contextmanager
def session_environment(model_path: Path) -> Iterator[None]:
    """What ONNX Runtime should read from the environment while it creates a session of this
    graph (one session at a time: the environment is the process's)."""
    with _session_environment:
        flash = os.environ.get(_NO_FLASH_ATTENTION)
        if Path(model_path).name == INT8_KV_GRAPH:
            os.environ[_NO_FLASH_ATTENTION] = "1"
        try:
            yield
        finally:
            _restore(_NO_FLASH_ATTENTION, flash)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _float32(logits: np.ndarray) -> np.ndarray:
    """Graphs made for CUDA give fp16 logits; sampling works in fp32 (a no-op otherwise)."""
    return logits.astype(np.float32, copy=False)
