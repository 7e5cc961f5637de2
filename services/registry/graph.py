"""Rewrites of exported decoder graphs: logits for the last position only, int4 weights, an
int8 KV cache.

The first two keep the graph's inputs and outputs; the third changes only the cache's type,
which the generation engine reads from the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

LOGITS = "logits"
INT4_BLOCK_SIZE = 32
# MatMulNBits accuracy level 4 quantizes activations to int8 per block: fastest on CPU.
INT4_ACCURACY_LEVEL = 4
# GroupQueryAttention's inputs: k_scale and v_scale follow its 12 others (some optional).
_GQA_K_SCALE_INPUT = 12


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
