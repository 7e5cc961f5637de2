"""Chat model exports: onnxruntime-genai's GroupQueryAttention graphs for the architectures its
model builder knows, optimum's graphs for the others, chosen from the source's metadata before
any export, and the graph kind carried through the manifest, the store and the proto."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from services.common.errors import InvalidArgument
from services.common.records import (
    INT8_KV_GRAPH,
    INT8_KV_PREFILL_GRAPH,
    GraphKind,
    ModelKind,
    SourceFormat,
    chat_model_file,
)
from services.registry.architectures import (
    BUILDER_ARCHITECTURES,
    GGUF_ARCHITECTURES,
    OPTIMUM_MODEL_TYPES,
)
from services.registry.defaults import smollm2_gguf
from services.registry.exporter import GQA_GRAPH_FILES
from services.registry.importer import ModelImporter
from services.registry.preflight import plan_chat_export

SMOLLM2_LAYERS, SMOLLM2_KV_HEADS, SMOLLM2_HEAD_SIZE, SMOLLM2_VOCAB = 30, 3, 64, 49152
GQA_STAGE = "{}: GroupQueryAttention graphs from onnxruntime-genai's model builder"
OPTIMUM_STAGE = "{}: optimum's text-generation-with-past graphs"
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def io_signature(values) -> dict[str, tuple[int, list]]:
    """name -> (element type, dims: a symbol's name or a size)."""
    return {
        v.name: (
            v.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    }


# ---- The default chat model ---------------------------------------------------------------


def test_default_chat_model_exports_the_gqa_graphs_for_cpu_and_cuda(chat_model):
    assert chat_model.graph is GraphKind.GQA
    artifact = Path(chat_model.artifact_dir)
    assert json.loads((artifact / "manifest.json").read_text())["graph"] == "GQA"
    # Tokenizer and configs at the root, where the services read them; no optimum graph.
    for name in ("tokenizer.json", "config.json", "generation_config.json", "chat_template.jinja"):
        assert (artifact / name).exists(), name
    assert not (artifact / "model.onnx").exists()
    for weights, device, folder in (
        ("int4", "cpu", "gqa-int4"),
        ("fp32", "cpu", "gqa-fp32"),
        ("int4", "cuda", "gqa-int4-cuda"),
    ):
        graph_file = artifact / chat_model_file(GraphKind.GQA, weights, device)
        assert graph_file == artifact / folder / "model.onnx"
        # The CPU graphs also come with an int8 KV cache and its prefill graph
        # (test_kv_cache_int8.py).
        int8_cache = (INT8_KV_GRAPH, INT8_KV_PREFILL_GRAPH) if device == "cpu" else ()
        assert sorted(p.name for p in graph_file.parent.iterdir()) == sorted(
            GQA_GRAPH_FILES + int8_cache
        )
    fp32_weights = artifact / "gqa-fp32" / "model.onnx.data"
    assert fp32_weights.stat().st_size > 500_000_000  # 135M parameters in fp32
    assert (artifact / "gqa-int4" / "model.onnx.data").stat().st_size < 250_000_000

    int4 = onnx.load(artifact / chat_model_file(GraphKind.GQA, "int4"), load_external_data=False)
    fp32 = onnx.load(artifact / chat_model_file(GraphKind.GQA, "fp32"), load_external_data=False)
    int4_ops = {node.op_type for node in int4.graph.node}
    fp32_ops = {node.op_type for node in fp32.graph.node}
    assert {"GroupQueryAttention", "MatMulNBits"} <= int4_ops
    assert "GroupQueryAttention" in fp32_ops and "MatMulNBits" not in fp32_ops

    int64, float32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    kv = ["batch_size", SMOLLM2_KV_HEADS, "past_sequence_length", SMOLLM2_HEAD_SIZE]
    present = ["batch_size", SMOLLM2_KV_HEADS, "total_sequence_length", SMOLLM2_HEAD_SIZE]
    expected_inputs = {
        "input_ids": (int64, ["batch_size", "sequence_length"]),
        "attention_mask": (int64, ["batch_size", "total_sequence_length"]),
    }
    # The last position's logits only: the engine samples from nothing else.
    expected_outputs = {"logits": (float32, ["batch_size", 1, SMOLLM2_VOCAB])}
    for layer in range(SMOLLM2_LAYERS):
        for tensor in ("key", "value"):
            expected_inputs[f"past_key_values.{layer}.{tensor}"] = (float32, kv)
            expected_outputs[f"present.{layer}.{tensor}"] = (float32, present)
    for model in (int4, fp32):
        assert io_signature(model.graph.input) == expected_inputs
        assert io_signature(model.graph.output) == expected_outputs
    # CUDA's: the same names and shapes, fp16 wherever the CPU graphs have fp32.
    cuda = onnx.load(
        artifact / chat_model_file(GraphKind.GQA, "int4", "cuda"), load_external_data=False
    )
    assert {"GroupQueryAttention", "MatMulNBits"} <= {node.op_type for node in cuda.graph.node}
    for signature, tensors in (
        (expected_inputs, cuda.graph.input),
        (expected_outputs, cuda.graph.output),
    ):
        as_fp16 = {
            name: (onnx.TensorProto.FLOAT16 if kind == float32 else kind, shape)
            for name, (kind, shape) in signature.items()
        }
        assert io_signature(tensors) == as_fp16


def test_gqa_fp32_greedy_decoding_matches_transformers(chat_model):
    """16 greedy steps of the fp32 graph under plain ONNX Runtime (past = the previous step's
    present) pick the tokens transformers' generate() picks from the same GGUF."""
    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    steps = 16
    artifact = Path(chat_model.artifact_dir)
    prompt = (
        "<|im_start|>user\nTell me a story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt_ids = Tokenizer.from_file(str(artifact / "tokenizer.json")).encode(prompt).ids

    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with torch.no_grad():
        generated = reference.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.int64),
            max_new_tokens=steps,
            do_sample=False,
        )
        first_logits = reference(torch.tensor([prompt_ids])).logits[0].numpy()
    expected = generated[0, len(prompt_ids) :].tolist()
    del reference
    assert len(expected) == steps  # the story outlasts the steps: no early end of turn

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        str(artifact / chat_model_file(GraphKind.GQA, "fp32")),
        options,
        providers=["CPUExecutionProvider"],
    )
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    past = {
        name: np.zeros((1, SMOLLM2_KV_HEADS, 0, SMOLLM2_HEAD_SIZE), np.float32)
        for name in past_names
    }
    output_names = [o.name for o in session.get_outputs()]
    tokens, fed, picked = list(prompt_ids), list(prompt_ids), []
    for step in range(steps):
        outputs = dict(
            zip(
                output_names,
                session.run(
                    None,
                    {
                        "input_ids": np.array([fed], np.int64),
                        "attention_mask": np.ones((1, len(tokens)), np.int64),
                        **past,
                    },
                ),
                strict=True,
            )
        )
        logits = outputs["logits"][0]
        if step == 0:
            # The prompt's last position, as transformers computes it.
            assert logits.shape == (1, SMOLLM2_VOCAB)
            np.testing.assert_allclose(logits[-1], first_logits[-1], atol=2e-3, rtol=0)
        token = int(logits[-1].argmax())
        picked.append(token)
        tokens.append(token)
        fed = [token]
        past = {name: outputs[name.replace("past_key_values.", "present.")] for name in past_names}
    assert picked == expected


# ---- The choice of exporter, before any export ----------------------------------------------


def checkpoint(path: Path, config: dict) -> Path:
    """Metadata only: a config.json and a chat template, no weights."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").write_text(TEMPLATE)
    return path


def gguf_file(path: Path, architecture: str, name: str = "") -> Path:
    """Metadata only: the architecture, a name and a chat template, no tensors."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, architecture)
    if name:
        writer.add_name(name)
    writer.add_chat_template(TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    ("architectures", "model_type", "graph"),
    [
        (["LlamaForCausalLM"], "llama", GraphKind.GQA),
        (["Qwen3ForCausalLM"], "qwen3", GraphKind.GQA),
        (["Gemma3ForCausalLM"], "gemma3_text", GraphKind.GQA),
        # Architectures the builder lacks, or whose builder graph takes inputs_embeds.
        (["GPTNeoXForCausalLM"], "gpt_neox", GraphKind.OPTIMUM),
        (["Gemma3ForConditionalGeneration"], "gemma3", GraphKind.OPTIMUM),
        # No architecture to dispatch the builder on; optimum goes by the model type.
        ([], "llama", GraphKind.OPTIMUM),
    ],
)
def test_a_checkpoints_config_chooses_its_graph(tmp_path, architectures, model_type, graph):
    config = {"model_type": model_type}
    if architectures:
        config["architectures"] = architectures
    plan = plan_chat_export(checkpoint(tmp_path / "ckpt", config), SourceFormat.HF_DIRECTORY)
    assert plan.graph is graph
    assert (plan.architecture, plan.model_type) == ((architectures or [""])[0], model_type)


@pytest.mark.parametrize(
    ("gguf_architecture", "name", "architecture", "graph"),
    [
        ("llama", "SmolLM2 135M", "LlamaForCausalLM", GraphKind.GQA),
        # transformers reads a llama GGUF named `mistral` back as Mistral.
        ("llama", "mistral", "MistralForCausalLM", GraphKind.GQA),
        ("gemma3", "", "Gemma3ForCausalLM", GraphKind.GQA),
        ("qwen2", "", "Qwen2ForCausalLM", GraphKind.GQA),
        ("gpt2", "", "GPT2LMHeadModel", GraphKind.OPTIMUM),
        ("falcon", "", "FalconForCausalLM", GraphKind.OPTIMUM),
    ],
)
def test_a_gguf_architecture_chooses_its_graph(
    tmp_path, gguf_architecture, name, architecture, graph
):
    source = gguf_file(tmp_path / "model.gguf", gguf_architecture, name)
    plan = plan_chat_export(source, SourceFormat.GGUF)
    assert (plan.architecture, plan.graph) == (architecture, graph)


def test_an_architecture_neither_exporter_takes_fails_before_any_export(tmp_path):
    sources = [
        # transformers reads it, but neither exporter takes it.
        checkpoint(
            tmp_path / "mamba", {"architectures": ["MambaForCausalLM"], "model_type": "mamba"}
        ),
        gguf_file(tmp_path / "mamba.gguf", "mamba"),
        # Unknown everywhere.
        checkpoint(
            tmp_path / "novel", {"architectures": ["NovelForCausalLM"], "model_type": "novel"}
        ),
        gguf_file(tmp_path / "novel.gguf", "novel"),
    ]
    importer = ModelImporter(tmp_path / "cache")
    stages = []
    for source in sources:
        with pytest.raises(InvalidArgument, match="neither onnxruntime-genai's model builder"):
            importer.import_model("m", ModelKind.CHAT, source, lambda s, f: stages.append(s))
    assert stages == []  # not even hashed, let alone exported
    assert not (tmp_path / "cache").exists()


# ---- Real exports of both kinds -------------------------------------------------------------


def test_a_builder_architecture_imports_as_gqa_graphs(cache_dir, tiny_checkpoint):
    stages = []
    record = ModelImporter(cache_dir).import_model(
        "tiny", ModelKind.CHAT, tiny_checkpoint, lambda stage, _: stages.append(stage)
    )
    assert record.graph is GraphKind.GQA
    assert stages[:2] == ["hashing source", GQA_STAGE.format("LlamaForCausalLM")]
    artifact = Path(record.artifact_dir)
    for weights in ("int4", "fp32"):
        assert (artifact / chat_model_file(record.graph, weights)).exists()
    assert record.context_length == 256  # config.json at the root


def test_an_architecture_the_builder_lacks_exports_with_optimum(cache_dir, tiny_gpt2_checkpoint):
    stages = []
    record = ModelImporter(cache_dir).import_model(
        "tiny-gpt2", ModelKind.CHAT, tiny_gpt2_checkpoint, lambda stage, _: stages.append(stage)
    )
    assert record.graph is GraphKind.OPTIMUM
    assert stages[:2] == ["hashing source", OPTIMUM_STAGE.format("GPT2LMHeadModel")]
    artifact = Path(record.artifact_dir)
    assert json.loads((artifact / "manifest.json").read_text())["graph"] == "OPTIMUM"
    for weights in ("int4", "fp32"):
        model = onnx.load(artifact / chat_model_file(record.graph, weights))
        logits = io_signature(model.graph.output)["logits"]
        assert logits[1][1] == 1  # last position only
        assert "position_ids" in io_signature(model.graph.input)
    assert not (artifact / "gqa-int4").exists()


# ---- The tables against the installed packages they describe -------------------------------


def test_builder_architectures_are_ones_the_installed_builder_knows():
    from onnxruntime_genai.models import builder

    known = set(re.findall(r'architectures\[0\] == "(\w+)"', inspect.getsource(builder)))
    assert "LlamaForCausalLM" in known
    assert known >= BUILDER_ARCHITECTURES


def test_optimum_model_types_are_the_causal_lms_installed_optimum_exports():
    from optimum.exporters.onnx import model_configs  # noqa: F401  (registers the configs)
    from optimum.exporters.tasks import TasksManager
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    exported = TasksManager.get_supported_model_type_for_task(
        "text-generation-with-past", exporter="onnx"
    )
    assert OPTIMUM_MODEL_TYPES == set(exported) & MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.keys()


def test_gguf_architectures_are_ones_installed_transformers_dequantizes():
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for gguf_architecture, (model_type, architecture) in GGUF_ARCHITECTURES.items():
        # transformers accepts the GGUF name or the model type it renames it to.
        assert {gguf_architecture, model_type} & set(GGUF_SUPPORTED_ARCHITECTURES)
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == architecture
