"""Rewrites of exported decoder graphs: logits for the last position only, int4 weights.

Both keep the graph's inputs and outputs, so the generation engine runs any of them.
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
