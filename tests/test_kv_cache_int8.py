"""The int8 KV cache: calibrated scales, the exported graph, and the engine decoding over it
close to the float cache (GENERATION_KV_CACHE=int8). Batching, slot reuse and prefix hits
over it are in test_engine.py and test_prefix_cache.py, run for either cache."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from services.common.domain import ChatMessage, SamplingParams
from services.common.onnx_runtime import select_providers
from services.common.records import (
    INT8_KV_GRAPH,
    INT8_KV_PREFILL_GRAPH,
    GraphKind,
    chat_model_file,
)
from services.generation.model_pool import ModelPool
from services.generation.onnx_model import OnnxCausalLM
from services.generation.sampler import ResolvedSampling
from services.generation.tokenizer import TextTokenizer
from services.registry.kv_calibration import HEADROOM, channel_scales

REPO = Path(__file__).resolve().parent.parent


def rotate_pairs(entries: np.ndarray, angles: np.ndarray, interleaved: bool) -> np.ndarray:
    """Rotary embedding's turn of every channel pair by `angles` (one per position)."""
    if interleaved:
        x, y = entries[..., 0::2], entries[..., 1::2]
    else:
        half = entries.shape[-1] // 2
        x, y = entries[..., :half], entries[..., half:]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    turned_x, turned_y = x * cos - y * sin, x * sin + y * cos
    if interleaved:
        out = np.empty_like(entries)
        out[..., 0::2], out[..., 1::2] = turned_x, turned_y
        return out
    return np.concatenate([turned_x, turned_y], axis=-1)


@pytest.mark.parametrize("interleaved", [False, True])
def test_key_scales_bound_the_channels_at_every_rotation(interleaved):
    rng = np.random.default_rng(0)
    # [kv_heads, positions, head_dim], with an outlier channel as real keys have.
    keys = rng.normal(size=(2, 40, 16)).astype(np.float32)
    keys[:, :, 3] *= 20
    scales = channel_scales(keys, rotated=True, interleaved=interleaved)
    bound = scales * 127 / HEADROOM
    for angle in np.linspace(0, 2 * np.pi, 24):
        turned = rotate_pairs(keys, np.full(keys.shape[1], angle), interleaved)
        assert (np.abs(turned).max(axis=1) <= bound * (1 + 1e-5)).all()
    # A pair's norm, not one channel's peak: both channels of the outlier's pair get it.
    partner = 2 if interleaved else 3 + 8
    assert np.allclose(scales[:, 3], scales[:, partner])


def test_value_scales_are_each_channels_peak_with_headroom():
    values = np.zeros((1, 5, 4), np.float32)
    values[0, 2] = [1.0, -2.0, 0.5, 0.0]
    scales = channel_scales(values, rotated=False, interleaved=False)
    assert np.allclose(scales[0, :3], np.array([1.0, 2.0, 0.5]) * HEADROOM / 127)
    # A channel that stayed zero keeps a positive scale.
    assert scales[0, 3] > 0


def test_the_export_writes_an_int8_cache_graph_beside_each_cpu_graph(chat_model):
    artifact = Path(chat_model.artifact_dir)
    for weights in ("int4", "fp32"):
        float_graph = onnx.load(
            artifact / chat_model_file(chat_model.graph, weights), load_external_data=False
        )
        path = artifact / chat_model_file(chat_model.graph, weights, kv_cache="int8")
        assert path.parent == (artifact / chat_model_file(chat_model.graph, weights)).parent
        graph = onnx.load(path, load_external_data=False).graph
        caches = [
            v for v in [*graph.input, *graph.output] if "past" in v.name or "present" in v.name
        ]
        assert caches and {v.type.tensor_type.elem_type for v in caches} == {onnx.TensorProto.INT8}
        # Only the proto differs: the weights stay in the float graph's file.
        weights_files = {
            entry.value
            for tensor in graph.initializer
            for entry in tensor.external_data
            if entry.key == "location"
        }
        assert weights_files == {"model.onnx.data"}
        initializers = {t.name: t for t in graph.initializer}
        attentions = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
        assert len(attentions) == sum(
            n.op_type == "GroupQueryAttention" for n in float_graph.graph.node
        )
        for node in attentions:
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert attributes["kv_cache_bit_width"] == 8
            assert attributes["k_quant_type"] == attributes["v_quant_type"] == b"PER_CHANNEL"
            for name in node.input[12:14]:
                scale = numpy_helper.to_array(initializers[name])
                assert scale.shape == (1, attributes["kv_num_heads"], 1, scale.shape[-1])
                assert (scale > 0).all() and np.isfinite(scale).all()
        # Its prefill graph reads the same int8 cache and returns a chunk's int8 entries.
        prefill = onnx.load(path.with_name(INT8_KV_PREFILL_GRAPH), load_external_data=False)
        pasts = [v for v in prefill.graph.input if v.name.startswith("past_key_values.")]
        outputs = {v.name: v.type.tensor_type.elem_type for v in prefill.graph.output}
        assert len(pasts) == len(caches) // 2
        assert {v.type.tensor_type.elem_type for v in pasts} == {onnx.TensorProto.INT8}
        assert outputs == {
            "logits": onnx.TensorProto.FLOAT,
            **{v.name.replace("past_key_values", "entries"): onnx.TensorProto.INT8 for v in pasts},
        }
        assert {
            entry.value
            for tensor in prefill.graph.initializer
            for entry in tensor.external_data
            if entry.key == "location"
        } == {"model.onnx.data"}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def test_int8_cache_predicts_the_float_caches_next_tokens(chat_model):
    """Teacher-forced over a text the calibration never saw, the int8 cache's next-token
    distribution stays close to the float cache's (int4 weights both; measured on 1k tokens:
    93% of argmaxes agree, KL 0.010 nats)."""
    artifact = Path(chat_model.artifact_dir)
    ours, theirs = (
        OnnxCausalLM(
            artifact / chat_model_file(chat_model.graph, "int4", kv_cache=kv),
            ["CPUExecutionProvider"],
        )
        for kv in ("int8", "float")
    )
    assert ours.kv_dtype == np.int8 and theirs.kv_dtype == np.float32
    # Flash attention was off only while the int8 session was made.
    assert "ORT_GQA_DISABLE_FLASH_ATTENTION" not in os.environ
    ids = TextTokenizer(artifact).encode((REPO / "docs" / "deploy.md").read_text())[:200]
    kv_int8, kv_float = ours.allocate(1, len(ids)), theirs.allocate(1, len(ids))
    assert kv_int8.bytes_per_token * 4 == kv_float.bytes_per_token
    agree, divergence = 0, []
    for position in range(8, len(ids)):
        chunk = np.array([ids[:8] if position == 8 else [ids[position - 1]]])
        start = np.array([0 if position == 8 else position - 1])
        p = log_softmax(ours.forward(kv_int8, 0, chunk, start)[0])
        q = log_softmax(theirs.forward(kv_float, 0, chunk, start)[0])
        agree += p.argmax() == q.argmax()
        divergence.append(float((np.exp(q) * (q - p)).sum()))
    steps = len(ids) - 8
    assert agree / steps >= 0.85
    assert np.mean(divergence) < 0.03


def int8_model(artifact: Path) -> OnnxCausalLM:
    return OnnxCausalLM(
        artifact / chat_model_file(GraphKind.GQA, "int4", kv_cache="int8"), ["CPUExecutionProvider"]
    )


def prefill(model: OnnxCausalLM, kv, slot: int, ids: list[int], chunk: int) -> np.ndarray:
    """Prefills `ids` into the slot `chunk` tokens at a time; the last position's logits."""
    for start in range(0, len(ids), chunk):
        part = np.array([ids[start : start + chunk]])
        logits = model.forward(kv, slot, part, np.array([start]))
    return logits[0]


def test_int8_prefill_does_not_depend_on_where_chunks_fall(chat_model):
    """The prefill graph attends over exactly what the cache holds, the chunk's own entries
    included: one chunk or many give the same cache and logits, bit for bit."""
    model = int8_model(Path(chat_model.artifact_dir))
    assert model.prefill_session is not None
    ids = TextTokenizer(Path(chat_model.artifact_dir)).encode(
        (REPO / "docs" / "deploy.md").read_text()
    )[:300]
    kv = model.allocate(3, 512)
    whole, chunked, uneven = (
        prefill(model, kv, slot, ids, chunk) for slot, chunk in ((0, 300), (1, 64), (2, 97))
    )
    assert np.array_equal(whole, chunked) and np.array_equal(whole, uneven)
    for array in kv.arrays:
        assert array[:, :, 300:].any() == False  # noqa: E712 - nothing past the prompt
        assert np.array_equal(array[0, :, :300], array[1, :, :300])
        assert np.array_equal(array[0, :, :300], array[2, :, :300])


def test_int8_prefill_writes_what_the_int8_graph_would(chat_model):
    """The prefill graph writes the int8 graph's entries: the first layer's (no attention
    before them) bit for bit, the same rotation, scales and rounding; deeper ones drift apart
    as attention sums round differently (both stay ~1 step from the float cache's entries:
    measured mean 1.1 steps apart at worst), and the next token is the same."""
    artifact = Path(chat_model.artifact_dir)
    fast = int8_model(artifact)
    direct = int8_model(artifact)
    direct.prefill_session = None  # as an artifact without the prefill graph runs
    ids = TextTokenizer(artifact).encode((REPO / "docs" / "deploy.md").read_text())[:300]
    kv_fast, kv_direct = fast.allocate(1, 512), direct.allocate(1, 512)
    logits_fast = prefill(fast, kv_fast, 0, ids, 128)
    logits_direct = prefill(direct, kv_direct, 0, ids, 128)
    assert logits_fast.argmax() == logits_direct.argmax()
    first_layer = slice(0, 2)
    first = zip(kv_fast.arrays[first_layer], kv_direct.arrays[first_layer], strict=True)
    for ours, theirs in first:
        assert np.array_equal(ours[0, :, :300], theirs[0, :, :300])
    for ours, theirs in zip(kv_fast.arrays, kv_direct.arrays, strict=True):
        steps = np.abs(ours[0, :, :300].astype(np.int16) - theirs[0, :, :300])
        assert steps.mean() < 2


async def test_an_engine_on_the_int8_cache_answers(loaded_chat_model_int8):
    loaded = loaded_chat_model_int8
    ids = loaded.render_prompt([ChatMessage("user", "What is the capital of France?")])[1]
    params = ResolvedSampling.resolve(SamplingParams(temperature=0.0, max_tokens=24), 4096)
    text = "".join([event.text async for event in loaded.engine.generate(ids, [params])])
    assert "Paris" in text


def without(source: Path, artifact: Path, graphs: tuple[str, ...]) -> Path:
    """A copy of an artifact (links to its files) as an earlier version exported it, without
    these graphs."""
    artifact.mkdir()
    for item in source.iterdir():
        if item.is_dir():
            (artifact / item.name).mkdir()
            for file in item.iterdir():
                if file.name not in graphs:
                    (artifact / item.name / file.name).symlink_to(file)
        else:
            (artifact / item.name).symlink_to(item)
    return artifact


async def test_a_model_exported_before_int8_caches_loads_with_a_float_one(chat_model, tmp_path):
    """An artifact without the int8 graph still serves, with its float cache."""
    graphs = (INT8_KV_GRAPH, INT8_KV_PREFILL_GRAPH)
    artifact = without(Path(chat_model.artifact_dir), tmp_path / "artifact", graphs)
    old = dataclasses.replace(chat_model, artifact_dir=str(artifact))

    async def lookup(name):
        return old

    pool = ModelPool(lookup, select_providers("cpu"), 0, 2, 512, weights="int4", kv_cache="int8")
    try:
        loaded = await pool.get(old.name)
        assert loaded.engine.model.kv_dtype == np.float32
    finally:
        pool.close()


def test_a_model_exported_before_the_int8_prefill_graph_prefills_with_the_int8_one(
    chat_model, tmp_path
):
    artifact = without(
        Path(chat_model.artifact_dir), tmp_path / "artifact", (INT8_KV_PREFILL_GRAPH,)
    )
    model = int8_model(artifact)
    assert model.kv_dtype == np.int8 and model.prefill_session is None
    kv = model.allocate(1, 64)
    logits = prefill(model, kv, 0, list(range(100, 140)), 16)
    assert np.isfinite(logits).all() and kv.arrays[0][0, :, :40].any()
