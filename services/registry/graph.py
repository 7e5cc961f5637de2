"""Rewrites of exported decoder graphs: logits for the last position only, int4 weights, an
int8 KV cache and the graph that prefills it.

The first two keep the graph's inputs and outputs; the third changes only the cache's type,
which the generation engine reads from the graph; the fourth returns a chunk's new cache
entries instead of writing them in place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from services.common.records import INT8_KV_ENTRIES

LOGITS = "logits"
INT4_BLOCK_SIZE = 32
# MatMulNBits accuracy level 4 quantizes activations to int8 per block: fastest on CPU.
INT4_ACCURACY_LEVEL = 4
# GroupQueryAttention's inputs: k_scale and v_scale follow its 12 others (some optional).
_GQA_K_SCALE_INPUT = 12
_GQA_COS_CACHE_INPUT = 7


def last_position_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Slices the hidden states to the last position before the LM head.

    The engine only ever samples from the last position, so a prefill of S tokens then costs
    one LM-head product instead of S (the head is ~20% of a small model's FLOPs) and its
    logits output shrinks from S x vocab to 1 x vocab.
    """
    graph = model.graph
    head = next(node for node in graph.node if LOGITS in node.output)
    if any(node.name == "last_position/Slice" for node in graph.node):
        return model
    constants = {
        "last_position/starts": [-1],
        "last_position/ends": [np.iinfo(np.int64).max],
        "last_position/axes": [1],
    }
    for name, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    sliced = "last_position/hidden"
    graph.node.insert(
        list(graph.node).index(head),
        helper.make_node(
            "Slice", [head.input[0], *constants], [sliced], name="last_position/Slice"
        ),
    )
    head.input[0] = sliced
    output = next(o for o in graph.output if o.name == LOGITS)
    output.type.tensor_type.shape.dim[1].ClearField("dim_param")
    output.type.tensor_type.shape.dim[1].dim_value = 1
    return model


def quantize_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """Block-wise symmetric int4 weights for every MatMul (MatMulNBits), activations in fp32."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=INT4_BLOCK_SIZE, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def save(model: onnx.ModelProto, path: Path) -> None:
    # Under protobuf's 2 GB limit for the small models this platform bundles; larger models
    # would need external data.
    onnx.save_model(model, str(path))


def save_with_data(model: onnx.ModelProto, path: Path) -> None:
    """Saves the graph as `path` and its weights as `path`.data beside it (replaced)."""
    data = path.with_name(path.name + ".data")
    # onnx appends to an existing data file: start from none.
    data.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
    )


def quantize_kv_cache(model: onnx.ModelProto, scales: dict[str, np.ndarray]) -> onnx.ModelProto:
    """An int8 KV cache for a GroupQueryAttention graph: every layer's past/present key and
    value become int8, stored and read by ONNX Runtime with fixed per-channel scales.

    `scales` holds, per past input (`past_key_values.<layer>.<key|value>`), one scale per
    [kv_head, channel] (see services/registry/kv_calibration.py). The weights stay where they
    were: only the graph's proto changes.
    """
    graph = model.graph
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        names = []
        # Inputs 3 and 4: the layer's past key and value.
        for past in node.input[3:5]:
            name = f"{past}/scale"
            scale = scales[past]
            # Broadcast over the cache's [batch, kv_heads, positions, head_dim].
            shaped = scale.astype(np.float32).reshape(1, scale.shape[0], 1, scale.shape[1])
            graph.initializer.append(numpy_helper.from_array(shaped, name))
            names.append(name)
        inputs = list(node.input) + [""] * (_GQA_K_SCALE_INPUT - len(node.input))
        node.ClearField("input")
        node.input.extend(inputs[:_GQA_K_SCALE_INPUT] + names)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = onnx.TensorProto.INT8
    return model


def int8_kv_prefill(model: onnx.ModelProto, scales: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The prefill graph of an int8 KV cache, from the float-cache graph and its scales.

    ONNX Runtime's attention over a quantized cache is ~2x slower than over a float one for
    multi-token chunks. This graph attends in float over exactly what the int8 cache holds:
    the past (past_key_values.*, int8 [1, kv_heads, max_len, head_dim], the slot's row) is
    dequantized up to its length, and the chunk's own rotated keys and values are quantized
    and dequantized with the same scales before attention. So the result does not depend on
    where chunks fall, and the chunk's int8 entries come back as outputs
    `entries.<layer>.<key|value>` [1, tokens, kv_heads * head_dim] for the engine to write
    into the slot. One row per run: positions follow from the mask's width.
    """
    graph = model.graph
    head_dim = (
        next(i for i in graph.input if i.name.startswith("past_key_values."))
        .type.tensor_type.shape.dim[3]
        .dim_value
    )
    rewrite = _GraphWriter(graph)
    attentions = [node for node in graph.node if node.op_type == "GroupQueryAttention"]
    total = attentions[0].input[6]
    # The chunk's positions: [past, total) with past = total - tokens.
    shape = rewrite.node("Shape", ["input_ids"])
    tokens = rewrite.node("Gather", [shape, rewrite.const(1)], axis=0)
    end = rewrite.node("Cast", [total], to=onnx.TensorProto.INT64)
    past = rewrite.node("Sub", [end, tokens])
    positions = rewrite.node(
        "Unsqueeze", [rewrite.node("Range", [past, end, rewrite.const(1)]), rewrite.const([0])]
    )
    past_end = rewrite.node("Unsqueeze", [past, rewrite.const([0])])
    prologue = rewrite.take()
    nodes, outputs = [], []
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        if node is attentions[0]:
            nodes += prologue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        heads, kv_heads = attributes.pop("num_heads"), attributes["kv_num_heads"]
        query, key, value = node.input[:3]
        if not key:  # packed [query | key | value]
            sizes = rewrite.const([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
            query, key, value = rewrite.nodes("Split", [query, sizes], 3, axis=2)
        if attributes.pop("do_rotary", 0):
            cos, sin = node.input[_GQA_COS_CACHE_INPUT : _GQA_COS_CACHE_INPUT + 2]
            width = 2 * next(i for i in graph.initializer if i.name == cos).dims[1]
            rotary = {"interleaved": attributes.pop("rotary_interleaved", 0)}
            if width < head_dim:  # partial rotary
                rotary["rotary_embedding_dim"] = width
            query, key = (
                rewrite.node("RotaryEmbedding", [x, positions, cos, sin], num_heads=n, **rotary)
                for x, n in ((query, heads), (key, kv_heads))
            )
        attributes.pop("rotary_interleaved", None)
        inputs = [query]
        pasts = []
        for entries, past_name in ((key, node.input[3]), (value, node.input[4])):
            scale = scales[past_name].astype(np.float32)
            per_channel = rewrite.const(scale.reshape(-1))
            quantized = past_name.replace("past_key_values", INT8_KV_ENTRIES)
            rewrite.node(
                "QuantizeLinear",
                [entries, per_channel, rewrite.const(np.zeros(scale.size, np.int8))],
                output=quantized,
                axis=2,
            )
            outputs.append(
                helper.make_tensor_value_info(
                    quantized, onnx.TensorProto.INT8, [1, "tokens", scale.size]
                )
            )
            inputs.append(_dequantized(rewrite, quantized, per_channel))
            held = rewrite.node(
                "Slice", [past_name, rewrite.const([0]), past_end, rewrite.const([2])]
            )
            per_head = rewrite.const(scale.reshape(1, kv_heads, 1, -1))
            pasts.append(_dequantized(rewrite, held, per_head))
        # No cos/sin caches: the rotation is done above.
        inputs += pasts + list(node.input[5:7]) + ["", ""] + list(node.input[9:12])
        nodes += rewrite.take()
        nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                inputs,
                [node.output[0], f"{node.name}/present_key", f"{node.name}/present_value"],
                name=node.name,
                domain="com.microsoft",
                num_heads=heads,
                **attributes,
            )
        )
    graph.ClearField("node")
    graph.node.extend(nodes)
    for value_info in graph.input:
        if value_info.name.startswith("past_key_values."):
            value_info.type.tensor_type.elem_type = onnx.TensorProto.INT8
    kept = [o for o in graph.output if not o.name.startswith("present.")]
    graph.ClearField("output")
    graph.output.extend(kept + outputs)
    return model


def _dequantized(rewrite: _GraphWriter, quantized: str, scale: str) -> str:
    """int8 entries x their scale, in float (what ONNX Runtime reads an int8 cache as)."""
    as_float = rewrite.node("Cast", [quantized], to=onnx.TensorProto.FLOAT)
    return rewrite.node("Mul", [as_float, scale])


class _GraphWriter:
    """New nodes and constants for a graph, uniquely named, held until taken."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.count = 0
        self.pending: list[onnx.NodeProto] = []

    def _name(self, op: str) -> str:
        self.count += 1
        return f"int8_prefill/{op}_{self.count}"

    def const(self, value) -> str:
        name = self._name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def nodes(self, op: str, inputs: list[str], outputs: int, **attributes) -> list[str]:
        name = self._name(op)
        names = [f"{name}/output_{i}" for i in range(outputs)]
        domain = "com.microsoft" if op == "RotaryEmbedding" else ""
        self.pending.append(
            helper.make_node(op, inputs, names, name=name, domain=domain, **attributes)
        )
        return names

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        if output is None:
            return self.nodes(op, inputs, 1, **attributes)[0]
        self.pending.append(
            helper.make_node(op, inputs, [output], name=self._name(op), **attributes)
        )
        return output

    def take(self) -> list[onnx.NodeProto]:
        taken, self.pending = self.pending, []
        return taken
