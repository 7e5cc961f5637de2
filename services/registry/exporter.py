"""Exports a GGUF file or Hugging Face checkpoint directory to ONNX with optimum.

Runs as a child process of the registry so torch and the fp32 weights leave memory when the
export ends:  python -m services.registry.exporter SOURCE FORMAT KIND OUT
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

from services.common.records import GraphKind, ModelKind, SourceFormat, chat_model_file

PROGRESS_PREFIX = "@@progress "
# Bump when the export recipe changes: it is part of the cache key.
EXPORT_RECIPE = "optimum-onnx-0.1.0/fp32+int4/last-position-logits/2"
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

    progress("reading GGUF tokenizer", 0.05)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    progress("dequantizing GGUF weights to fp32", 0.15)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
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


def export(
    source: Path, source_format: SourceFormat, kind: ModelKind, out: Path, progress: Progress
):
    """Writes the ONNX model with its tokenizer and configs into `out`, atomically."""
    from optimum.exporters.onnx import main_export

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        tmp_path = Path(tmp)
        checkpoint = source
        if source_format is SourceFormat.GGUF:
            checkpoint = _gguf_to_checkpoint(source, tmp_path / "checkpoint", progress)
        progress("exporting to ONNX and validating", 0.45)
        onnx_dir = tmp_path / "onnx"
        main_export(
            model_name_or_path=str(checkpoint),
            output=onnx_dir,
            task=ONNX_TASKS[kind],
            local_files_only=True,
        )
        if kind is ModelKind.CHAT:
            _write_variants(onnx_dir, progress)
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
            json.dumps({"recipe": EXPORT_RECIPE, "source": str(source), "kind": kind.name})
        )
        try:
            onnx_dir.rename(out)
        except OSError:
            # Another importer finished the same export first; theirs is identical.
            if not (out / "manifest.json").exists():
                raise
    progress("exported", 1.0)


def main(argv: list[str]) -> None:
    source, source_format, kind, out = argv
    # A cancelled import terminates this process: exit through Python, so the temporary
    # directory (gigabytes, for a large model) is removed rather than left in the cache.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    def report(stage: str, fraction: float) -> None:
        print(PROGRESS_PREFIX + json.dumps({"stage": stage, "progress": fraction}), flush=True)

    export(Path(source), SourceFormat[source_format], ModelKind[kind], Path(out), report)


if __name__ == "__main__":
    main(sys.argv[1:])
