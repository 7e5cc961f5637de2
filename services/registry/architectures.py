"""Which exporter takes a chat model, by architecture: onnxruntime-genai's model builder
(GroupQueryAttention graphs) where it knows the architecture, optimum otherwise.

Plain tables, read without importing torch, transformers or either exporter (the registry
decides before it starts the export child). tests/test_exporter.py checks each against the
installed package it describes, so a version bump that changes one fails there first.
"""

from __future__ import annotations

from services.common.records import GraphKind

# Hugging Face architectures (config.json `architectures[0]`, the key the builder dispatches
# on) that onnxruntime-genai 0.11.4's builder turns into a text decoder taking `input_ids`, on
# the CPU, without the checkpoint's remote code. Of its list, left out: ChatGLM and
# Phi3Small (remote code), GptOss and PhiMoE (MoE operators; PhiMoE is CUDA only), and the
# multimodal ones, whose text graph takes `inputs_embeds` (Gemma3ForConditionalGeneration,
# Phi3V, Phi4MM, Qwen2.5-VL).
BUILDER_ARCHITECTURES = frozenset(
    {
        "Ernie4_5_ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "GraniteForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "NemotronForCausalLM",
        "OlmoForCausalLM",
        "PhiForCausalLM",
        "Phi3ForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "SmolLM3ForCausalLM",
    }
)

# Model types (config.json `model_type`) that optimum-onnx 0.1.0 exports with the task
# `text-generation-with-past` and transformers 4.57 loads as causal LMs without remote code.
OPTIMUM_MODEL_TYPES = frozenset(
    {
        "arcee",
        "bart",
        "bigbird_pegasus",
        "blenderbot",
        "blenderbot-small",
        "bloom",
        "codegen",
        "cohere",
        "deepseek_v3",
        "falcon",
        "gemma",
        "gemma2",
        "gemma3",
        "gemma3_text",
        "glm",
        "gpt2",
        "gpt_bigcode",
        "gpt_neo",
        "gpt_neox",
        "gpt_oss",
        "gptj",
        "granite",
        "helium",
        "llama",
        "marian",
        "mbart",
        "mistral",
        "mpt",
        "nemotron",
        "olmo",
        "olmo2",
        "opt",
        "pegasus",
        "phi",
        "phi3",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "smollm3",
        "stablelm",
    }
)

# GGUF `general.architecture` -> (model_type, architecture) of the checkpoint that
# transformers 4.57 dequantizes it to (the causal LMs among its GGUF architectures).
GGUF_ARCHITECTURES = {
    "bloom": ("bloom", "BloomForCausalLM"),
    "falcon": ("falcon", "FalconForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "gpt2": ("gpt2", "GPT2LMHeadModel"),
    "lfm2": ("lfm2", "Lfm2ForCausalLM"),
    "llama": ("llama", "LlamaForCausalLM"),
    "mamba": ("mamba", "MambaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "nemotron": ("nemotron", "NemotronForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen2moe": ("qwen2_moe", "Qwen2MoeForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "stablelm": ("stablelm", "StableLmForCausalLM"),
    "starcoder2": ("starcoder2", "Starcoder2ForCausalLM"),
}


def gguf_checkpoint_architecture(gguf_architecture: str, model_name: str) -> tuple[str, str]:
    """(model_type, architecture) of the checkpoint a GGUF file dequantizes to; ("", "") when
    transformers cannot read the GGUF architecture."""
    # llama.cpp writes Mistral models as `llama`; transformers reads one back as Mistral when
    # its `general.name` is `mistral` (it tests membership in the field's list of values).
    if gguf_architecture == "llama" and model_name == "mistral":
        gguf_architecture = "mistral"
    return GGUF_ARCHITECTURES.get(gguf_architecture, ("", ""))


def choose_graph(architecture: str, model_type: str) -> GraphKind | None:
    """The graph a chat model of this architecture exports to; None when neither exporter
    takes it."""
    if architecture in BUILDER_ARCHITECTURES:
        return GraphKind.GQA
    if model_type in OPTIMUM_MODEL_TYPES:
        return GraphKind.OPTIMUM
    return None
