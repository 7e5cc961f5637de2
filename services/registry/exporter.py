"""Exports a GGUF file or Hugging Face checkpoint directory to ONNX.

Chat models export to the graph the preflight chose (services/registry/preflight.py):
- GQA: onnxruntime-genai's model builder, run twice from the checkpoint (a GGUF file is
  dequantized to one first), writes gqa-int4/ and gqa-fp32/, each with model.onnx, its
  weights in model.onnx.data and the builder's genai_config.json;
- OPTIMUM: optimum's text-generation-with-past export, sliced to last-position logits
  (model.onnx) and quantized to int4 (model.int4.onnx).
Embedding models export with optimum's feature-extraction task (model.onnx). Either way the
tokenizer, config.json, generation_config.json and chat template lie at the artifact's root,
and manifest.json records the recipe and the graph.

Runs as a child process of the registry so torch and the fp32 weights leave memory when the
export ends:  python -m services.registry.exporter SOURCE FORMAT KIND GRAPH OUT
Progress goes to stdout as lines starting with PROGRESS_PREFIX and a JSON object.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.common.records import (
    INT8_KV_GRAPH,
    INT8_KV_PREFILL_GRAPH,
    GraphKind,
    ModelKind,
    SourceFormat,
    chat_model_file,
)

PROGRESS_PREFIX = "@@progress "
# Bump when the export recipe changes: it is part of the cache key.
EXPORT_RECIPE = (
    "ort-genai-0.11.4/gqa-int4+fp32+int4-cuda+kv-int8+kv-int8-prefill"
    "|optimum-onnx-0.1.0/fp32+int4/last-logits/7"
)
# What each gqa-*/ folder keeps of the builder's output.
GQA_GRAPH_FILES = ("model.onnx", "model.onnx.data", "genai_config.json")
# The stage the export child reports as the builder starts on one weight variant.
BUILD_STAGE = "building the {weights} GroupQueryAttention graph for {device} (onnxruntime-genai)"
# (weights, device, progress when it starts) of the builder's graphs.
GQA_VARIANTS = (("int4", "cpu", 0.45), ("fp32", "cpu", 0.6), ("int4", "cuda", 0.8))
ONNX_TASKS = {
    ModelKind.CHAT: "text-generation-with-past",
    ModelKind.EMBEDDING: "feature-extraction",
}
CHATML_END = "<|im_end|>"
# sentence-transformers configs: pooling, normalization and the sequence limit of the model,
# which optimum's transformers export leaves behind. The embedding service reads them.
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


Progress = Callable[[str, float], None]


def _gguf_to_checkpoint(gguf: Path, out: Path, progress: Progress) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.registry.gguf_tokenizer import GEMMA_MODEL_TYPES, gemma_tokenizer

    progress("dequantizing GGUF weights to fp32", 0.05)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    progress("reading GGUF tokenizer", 0.25)
    if model.config.model_type in GEMMA_MODEL_TYPES:
        # transformers would read Gemma's BPE vocabulary as Unigram (see gguf_tokenizer).
        tokenizer = gemma_tokenizer(gguf)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # GGUF tokenizers of ChatML models end turns with <|im_end|> but declare other eos/pad
    # tokens and a BOS the template never writes; generation would then never stop.
    if CHATML_END in (tokenizer.chat_template or ""):
        tokenizer.eos_token = CHATML_END
        tokenizer.pad_token = CHATML_END
        tokenizer.add_bos_token = False
        end_id = tokenizer.convert_tokens_to_ids(CHATML_END)
        model.generation_config.eos_token_id = end_id
        model.generation_config.pad_token_id = end_id
    progress("saving fp32 checkpoint", 0.35)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _write_variants(onnx_dir: Path, progress: Progress) -> None:
    """fp32 with last-position logits as model.onnx, and its int4-weight twin."""
    import onnx

    from services.registry.graph import last_position_logits, quantize_int4, save

    fp32 = onnx_dir / chat_model_file(GraphKind.OPTIMUM, "fp32")
    progress("slicing logits to the last position", 0.8)
    model = last_position_logits(onnx.load(fp32))
    save(model, fp32)
    progress("quantizing weights to int4", 0.9)
    save(quantize_int4(model), onnx_dir / chat_model_file(GraphKind.OPTIMUM, "int4"))


def _export_optimum(checkpoint: Path, kind: ModelKind, onnx_dir: Path, progress: Progress):
    from optimum.exporters.onnx import main_export

    progress("exporting to ONNX and validating", 0.45)
    main_export(
        model_name_or_path=str(checkpoint),
        output=onnx_dir,
        task=ONNX_TASKS[kind],
        local_files_only=True,
    )
    if kind is ModelKind.CHAT:
        _write_variants(onnx_dir, progress)


def _slice_logits(graph_file: Path) -> None:
    """Logits for the last position only: a prefill chunk of S tokens then runs the LM head
    once, not S times (5x faster prefill of a 1k-token prompt on SmolLM2)."""
    import onnx

    from services.registry.graph import last_position_logits, save_with_data

    save_with_data(last_position_logits(onnx.load(graph_file)), graph_file)


def _write_int8_kv_cache(graph_file: Path, calibration: list[int]) -> None:
    """The same graph with an int8 KV cache, and the graph that prefills it, beside it and
    sharing its weights file."""
    import onnx

    from services.registry.graph import int8_kv_prefill, quantize_kv_cache, save
    from services.registry.kv_calibration import kv_scales

    model = onnx.load(str(graph_file), load_external_data=False)
    scales = kv_scales(graph_file, model, calibration)
    prefill = onnx.ModelProto()
    prefill.CopyFrom(model)
    save(int8_kv_prefill(prefill, scales), graph_file.with_name(INT8_KV_PREFILL_GRAPH))
    save(quantize_kv_cache(model, scales), graph_file.with_name(INT8_KV_GRAPH))


def _export_gqa(checkpoint: Path, onnx_dir: Path, scratch: Path, progress: Progress) -> None:
    """The weight variants with onnxruntime-genai's model builder (its default int4: RTN,
    block size 32, symmetric, accuracy level 4 on the CPU): int4 and fp32 for the CPU, int4
    with fp16 activations for CUDA; the CPU graphs also with an int8 KV cache; the tokenizer
    and config beside."""
    from onnxruntime_genai.models.builder import create_model
    from transformers import AutoConfig, AutoTokenizer

    from services.registry.kv_calibration import calibration_ids

    calibration = calibration_ids(checkpoint)
    for weights, device, fraction in GQA_VARIANTS:
        progress(BUILD_STAGE.format(weights=weights, device=device), fraction)
        graph_dir = onnx_dir / Path(chat_model_file(GraphKind.GQA, weights, device)).parent
        create_model(
            model_name=None,
            input_path=str(checkpoint),
            output_dir=str(graph_dir),
            precision=weights,
            execution_provider=device,
            cache_dir=str(scratch / f"builder-{weights}-{device}"),
            # A local checkpoint: no Hugging Face token, none of its remote code.
            hf_token="false",
            hf_remote=False,
        )
        # The builder also copies the tokenizer beside each graph: the root has it once (and a
        # GGUF's tokenizer.model is the whole GGUF file again).
        for path in graph_dir.iterdir():
            if path.name not in GQA_GRAPH_FILES:
                path.unlink()
        _slice_logits(graph_dir / "model.onnx")
        if device == "cpu":
            progress(f"calibrating an int8 KV cache for the {weights} graph", fraction + 0.1)
            _write_int8_kv_cache(graph_dir / "model.onnx", calibration)
    # What optimum's export writes at the root, where the services read it.
    progress("saving the tokenizer and config", 0.95)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(onnx_dir)
    AutoConfig.from_pretrained(checkpoint).save_pretrained(onnx_dir)


def export(
    source: Path,
    source_format: SourceFormat,
    kind: ModelKind,
    graph: GraphKind,
    out: Path,
    progress: Progress,
):
    """Writes the ONNX graphs with their tokenizer and configs into `out`, atomically."""
    if kind is ModelKind.EMBEDDING and graph is not GraphKind.OPTIMUM:
        raise ValueError("embedding models export with optimum only")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        tmp_path = Path(tmp)
        checkpoint = source
        if source_format is SourceFormat.GGUF:
            checkpoint = _gguf_to_checkpoint(source, tmp_path / "checkpoint", progress)
        onnx_dir = tmp_path / "onnx"
        if graph is GraphKind.GQA:
            _export_gqa(checkpoint, onnx_dir, tmp_path, progress)
        else:
            _export_optimum(checkpoint, kind, onnx_dir, progress)
        # optimum copies tokenizer files but not a separate chat_template.jinja.
        for extra in (
            "chat_template.jinja",
            "generation_config.json",
            *SENTENCE_TRANSFORMERS_FILES,
        ):
            if (checkpoint / extra).exists() and not (onnx_dir / extra).exists():
                (onnx_dir / extra).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(checkpoint / extra, onnx_dir / extra)
        (onnx_dir / "manifest.json").write_text(
            json.dumps(
                {
                    "recipe": EXPORT_RECIPE,
                    "source": str(source),
                    "kind": kind.name,
                    "graph": graph.name,
                }
            )
        )
        try:
            onnx_dir.rename(out)
        except OSError:
            # Another importer finished the same export first; theirs is identical.
            if not (out / "manifest.json").exists():
                raise
    progress("exported", 1.0)


def main(argv: list[str]) -> None:
    source, source_format, kind, graph, out = argv
    # A cancelled import terminates this process: exit through Python, so the temporary
    # directory (gigabytes, for a large model) is removed rather than left in the cache.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    def report(stage: str, fraction: float) -> None:
        print(PROGRESS_PREFIX + json.dumps({"stage": stage, "progress": fraction}), flush=True)

    export(
        Path(source),
        SourceFormat[source_format],
        ModelKind[kind],
        GraphKind[graph],
        Path(out),
        report,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
