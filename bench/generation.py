"""Generation throughput and latency, side by side in one run, on the same model and weights:

  stack     our whole stack over HTTP (edge -> gRPC -> engine), concurrent SSE streams
  engine    our engine called in-process (what the edge + gRPC hop costs is the difference)
  ort-genai onnxruntime-genai's in-process static batch (the reference peer)

  .venv/bin/python bench/generation.py [--concurrency 1,2,4,8,16] [--max-tokens 128]
                                       [--weights int4] [--systems stack,engine,ort-genai]
                                       [--device cpu]

Prints a table and writes docs/benchmarks/generation-<weights>[-cuda].md and .png. Each stream
gets its own prompt and generates exactly --max-tokens tokens (ignore_eos), greedy. On a GPU
machine, `--device cuda --systems stack,engine` runs the CUDA graph with device-resident KV
(the ort-genai peer builds CPU graphs only).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.common.domain import ChatMessage, SamplingParams  # noqa: E402
from services.common.local import free_port  # noqa: E402
from services.common.onnx_runtime import select_providers  # noqa: E402
from services.common.records import (  # noqa: E402
    CHAT_WEIGHTS,
    GraphKind,
    ModelKind,
    chat_model_file,
)
from services.generation.chat_template import ChatTemplate  # noqa: E402
from services.generation.engine import GenerationEngine  # noqa: E402
from services.generation.onnx_model import OnnxCausalLM  # noqa: E402
from services.generation.sampler import ResolvedSampling  # noqa: E402
from services.generation.tokenizer import TextTokenizer  # noqa: E402
from services.registry.defaults import DEFAULT_CHAT_MODEL, smollm2_gguf  # noqa: E402
from services.registry.importer import ModelImporter  # noqa: E402
from services.registry.settings import RegistrySettings  # noqa: E402

OUT_DIR = REPO / "docs" / "benchmarks"
TOPICS = [
    "a lighthouse keeper", "a lost robot", "a desert caravan", "a city under the sea",
    "a dragon who cannot fly", "a time-travelling baker", "a chess tournament", "a comet",
    "a mountain village", "a haunted library", "a river spirit", "an old sailor",
    "a garden on Mars", "a clockmaker", "a winter festival", "a secret tunnel",
]  # fmt: skip


def prompts(count: int) -> list[str]:
    return [f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}." for i in range(count)]


@dataclass
class Stream:
    started: float
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0


@dataclass
class Result:
    system: str
    concurrency: int
    streams: list[Stream]

    @property
    def tokens_per_s(self) -> float:
        start = min(s.started for s in self.streams)
        end = max(s.token_times[-1] for s in self.streams)
        return sum(s.tokens for s in self.streams) / (end - start)

    def _ttft(self) -> list[float]:
        return [s.token_times[0] - s.started for s in self.streams]

    def _itl(self) -> list[float]:
        return [b - a for s in self.streams for a, b in itertools.pairwise(s.token_times)]

    def row(self) -> dict:
        ttft, itl = self._ttft(), self._itl()
        return {
            "system": self.system,
            "streams": self.concurrency,
            "tokens/s": self.tokens_per_s,
            "TTFT p50 ms": percentile(ttft, 50) * 1000,
            "TTFT p95 ms": percentile(ttft, 95) * 1000,
            "ITL p50 ms": percentile(itl, 50) * 1000,
            "ITL p95 ms": percentile(itl, 95) * 1000,
        }


def percentile(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


# Our stack over HTTP


class StackUnderTest:
    def __init__(self, weights: str, device: str):
        self.data = Path(tempfile.mkdtemp(prefix="llmserve-bench-"))
        self.port = free_port()
        env = {
            **os.environ,
            "REGISTRY_DB_PATH": str(self.data / "registry.db"),
            "REGISTRY_DEV_KEY_PATH": str(self.data / "dev-api-key"),
            "REGISTRY_PORT": str(free_port()),
            "GENERATION_PORT": str(free_port()),
            "GENERATION_WEIGHTS": weights,
            "GENERATION_DEVICE": device,
            "EDGE_PORT": str(self.port),
            "EDGE_ADMIN_TOKEN": "bench",
        }
        self.log = (self.data / "stack.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.launcher"],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600
        while "ready: OpenAI API" not in (self.data / "stack.log").read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.data / "stack.log").read_text())
            time.sleep(0.5)
        self.key = (self.data / "dev-api-key").read_text().strip()

    def close(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)

    async def run(self, texts: list[str], max_tokens: int) -> list[Stream]:
        headers = {"Authorization": f"Bearer {self.key}"}
        limits = httpx.Limits(max_connections=len(texts) + 4)
        async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as client:

            async def one(text: str) -> Stream:
                body = {
                    "model": DEFAULT_CHAT_MODEL,
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                }
                stream = Stream(time.perf_counter())
                url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
                async with client.stream("POST", url, json=body) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            stream.tokens = chunk["usage"]["completion_tokens"]
                        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                            stream.token_times.append(time.perf_counter())
                return stream

            return await asyncio.gather(*(one(t) for t in texts))


# Our engine in-process


class EngineUnderTest:
    def __init__(
        self,
        artifact_dir: Path,
        graph: GraphKind,
        weights: str,
        template: ChatTemplate,
        device: str,
    ):
        self.tokenizer = TextTokenizer(artifact_dir)
        model = OnnxCausalLM(
            artifact_dir / chat_model_file(graph, weights, device),
            select_providers(device),
            intra_op_threads=0,
        )
        self.engine = GenerationEngine(model, self.tokenizer, context_length=8192)
        self.template = template

    def close(self) -> None:
        self.engine.close()

    async def run(self, texts: list[str], max_tokens: int) -> list[Stream]:
        params = ResolvedSampling.resolve(
            SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), 8192
        )

        async def one(text: str) -> Stream:
            ids = self.tokenizer.encode(self.template.render([ChatMessage("user", text)]))
            stream = Stream(time.perf_counter())
            async for event in self.engine.generate(ids, [params]):
                stream.token_times.append(time.perf_counter())
                stream.tokens += len(event.token_ids)
            return stream

        return await asyncio.gather(*(one(t) for t in texts))


# onnxruntime-genai's static batch


def ort_genai_model(weights: str) -> Path:
    """Builds (once, cached) the same checkpoint with onnxruntime-genai's model builder."""
    out = RegistrySettings().cache_dir / "bench" / f"ort-genai-{weights}"
    if (out / "genai_config.json").exists():
        return out
    from services.registry.exporter import _gguf_to_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _gguf_to_checkpoint(smollm2_gguf(), Path(tmp) / "hf", lambda *_: None)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime_genai.models.builder",
                "-i",
                str(checkpoint),
                "-o",
                str(out),
                "-p",
                weights,
                "-e",
                "cpu",
            ],  # fmt: skip
            check=True,
        )
    return out


class OrtGenaiUnderTest:
    def __init__(self, weights: str, template: ChatTemplate):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(ort_genai_model(weights)))
        self.tokenizer = og.Tokenizer(self.model)
        self.template = template

    def close(self) -> None:
        pass

    async def run(self, texts: list[str], max_tokens: int) -> list[Stream]:
        return await asyncio.to_thread(self._run, texts, max_tokens)

    def _run(self, texts: list[str], max_tokens: int) -> list[Stream]:
        og = self.og
        rendered = [self.template.render([ChatMessage("user", t)]) for t in texts]
        tokens = self.tokenizer.encode_batch(rendered)
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=int(tokens.shape()[1]) + max_tokens,
            min_length=int(tokens.shape()[1]) + max_tokens,
            do_sample=False,
            batch_size=len(texts),
        )
        started = time.perf_counter()
        streams = [Stream(started) for _ in texts]
        generator = og.Generator(self.model, params)
        generator.append_tokens(tokens)
        while not generator.is_done():
            generator.generate_next_token()
            now = time.perf_counter()
            for stream in streams:
                stream.token_times.append(now)
                stream.tokens += 1
        return streams


# Report


def markdown(rows: list[dict], weights: str, max_tokens: int) -> str:
    header = list(rows[0])
    lines = [
        f"# Generation benchmark ({DEFAULT_CHAT_MODEL}, {weights} weights)",
        "",
        f"`{' '.join(sys.argv)}` on {os.cpu_count()} CPU cores; {max_tokens} new tokens per "
        "stream, greedy, distinct prompts. TTFT and ITL per stream; tokens/s over all streams.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, ttft) = plt.subplots(1, 2, figsize=(11, 4))
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        x = [r["streams"] for r in mine]
        throughput.plot(x, [r["tokens/s"] for r in mine], marker="o", label=system)
        ttft.plot(x, [r["TTFT p50 ms"] for r in mine], marker="o", label=system)
    throughput.set(xlabel="concurrent streams", ylabel="aggregate tokens/s", xscale="log")
    ttft.set(xlabel="concurrent streams", ylabel="TTFT p50 (ms)", xscale="log")
    for axes in (throughput, ttft):
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--weights", choices=CHAT_WEIGHTS, default="int4")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--systems", default="stack,engine,ort-genai")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    record = ModelImporter(RegistrySettings().cache_dir).import_model(
        DEFAULT_CHAT_MODEL, ModelKind.CHAT, smollm2_gguf(), lambda *_: None
    )
    artifact_dir = Path(record.artifact_dir)
    tokenizer = TextTokenizer(artifact_dir)
    template = ChatTemplate(record.chat_template, tokenizer.special_tokens)
    builders = {
        "stack": lambda: StackUnderTest(args.weights, args.device),
        "engine": lambda: EngineUnderTest(
            artifact_dir, record.graph, args.weights, template, args.device
        ),
        "ort-genai": lambda: OrtGenaiUnderTest(args.weights, template),
    }
    rows = []
    for name in args.systems.split(","):
        system = builders[name]()
        try:
            await system.run(prompts(1), 8)  # warm-up
            for level in levels:
                result = Result(name, level, await system.run(prompts(level), args.max_tokens))
                rows.append(result.row())
                print(json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                  for k, v in rows[-1].items()}), flush=True)  # fmt: skip
        finally:
            system.close()
    rows.sort(key=lambda r: (r["streams"], r["system"]))
    report = markdown(rows, args.weights, args.max_tokens)
    print(report)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    name = f"generation-{args.weights}" + ("-cuda" if args.device == "cuda" else "")
    (OUT_DIR / f"{name}.md").write_text(report)
    plot(rows, OUT_DIR / f"{name}.png")


if __name__ == "__main__":
    asyncio.run(main())
