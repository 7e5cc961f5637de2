"""What constrained decoding costs per decode step, on the real model in-process.

  .venv/bin/python -m bench.constrained [--weights int4] [--steps 64] [--repeats 3]

Two measurements, printed as tables:
  sampler  one row's next_token (mask + sample + grammar advance) with and without a grammar,
           on the model's own logits along a real constrained trajectory (per-row overhead);
  engine   a batch of 8 greedy sequences decoding --steps tokens each, with 0, 1 or 8 of them
           constrained by a JSON schema that cannot finish within --steps tokens (so the batch
           stays 8 rows): milliseconds per decode step, first token excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.common.domain import ChatMessage, OutputConstraint, SamplingParams  # noqa: E402
from services.common.onnx_runtime import select_providers  # noqa: E402
from services.common.records import ModelKind  # noqa: E402
from services.generation.model_pool import LoadedModel, ModelPool  # noqa: E402
from services.generation.sampler import ResolvedSampling, Sampler  # noqa: E402
from services.registry.defaults import DEFAULT_CHAT_MODEL, smollm2_gguf  # noqa: E402
from services.registry.importer import ModelImporter  # noqa: E402
from services.registry.settings import RegistrySettings  # noqa: E402

BATCH = 8
# Needs at least 40 strings: far more than --steps tokens, so no constrained row ends early.
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "facts": {
            "type": "array",
            "items": {"type": "string", "minLength": 5, "maxLength": 60},
            "minItems": 40,
        },
    },
    "required": ["city", "facts"],
    "additionalProperties": False,
}
CONSTRAINT = OutputConstraint("json_schema", json.dumps(SCHEMA))


def _prompts(loaded: LoadedModel) -> list[list[int]]:
    cities = ["Paris", "Seoul", "Lagos", "Lima", "Oslo", "Cairo", "Tokyo", "Quito"]
    return [
        loaded.render_prompt([ChatMessage("user", f"List facts about {c} as JSON.")])[1]
        for c in cities
    ]


def _params(steps: int, grammar=None) -> ResolvedSampling:
    base = ResolvedSampling.resolve(
        SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True, seed=1), 100_000
    )
    return replace(base, grammar=grammar)


async def _one(loaded: LoadedModel, prompt: list[int], params: ResolvedSampling) -> list[float]:
    times = []
    async for _ in loaded.engine.generate(prompt, [params]):
        times.append(time.perf_counter())
    return times


async def engine_ms_per_step(loaded: LoadedModel, constrained: int, steps: int) -> float:
    grammar = loaded.grammars.compile(CONSTRAINT)
    prompts = _prompts(loaded)
    params = [_params(steps, grammar if i < constrained else None) for i in range(BATCH)]
    runs = await asyncio.gather(*(_one(loaded, p, s) for p, s in zip(prompts, params, strict=True)))
    assert all(len(times) == steps for times in runs), [len(t) for t in runs]
    start = max(times[0] for times in runs)
    end = max(times[-1] for times in runs)
    return (end - start) / (steps - 1) * 1000


def sampler_us_per_row(loaded: LoadedModel, steps: int) -> tuple[float, float]:
    """(without, with) a grammar: microseconds of next_token on the same logits rows."""
    prompt = _prompts(loaded)[0]
    grammar = loaded.grammars.compile(CONSTRAINT)
    model = loaded.engine.model
    # The model's logits along a constrained trajectory (one forward pass per token).
    ids = list(prompt)
    rows = []
    sampler = Sampler(_params(steps, grammar), prompt)
    cache = model.empty_cache(1)
    feed = ids
    for _ in range(steps):
        n = len(feed)
        logits, cache = model.forward(
            np.array([feed], np.int64),
            np.ones((1, len(ids)), np.int64),
            np.arange(len(ids) - n, len(ids), dtype=np.int64)[None],
            cache,
        )
        rows.append(logits[0].copy())
        token = sampler.next_token(logits[0])
        ids.append(token)
        feed = [token]
    timings = {}
    for name, with_grammar in (("free", None), ("constrained", grammar)):
        best = float("inf")
        for _ in range(5):
            sampler = Sampler(_params(steps, with_grammar), prompt)
            started = time.perf_counter()
            for row in rows:
                sampler.next_token(row)
            best = min(best, (time.perf_counter() - started) / len(rows))
        timings[name] = best * 1e6
    return timings["free"], timings["constrained"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="int4", choices=["int4", "fp32"])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    record = ModelImporter(RegistrySettings().cache_dir).import_model(
        DEFAULT_CHAT_MODEL, ModelKind.CHAT, smollm2_gguf(), progress=lambda *_: None
    )

    async def lookup(name):
        return record

    async def run() -> None:
        pool = ModelPool(lookup, select_providers("cpu"), 0, BATCH, 4096, weights=args.weights)
        try:
            loaded = await pool.get(record.name)
            started = time.perf_counter()
            loaded.grammars.compile(CONSTRAINT)
            compile_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            loaded.grammars.compile(CONSTRAINT)
            cached_us = (time.perf_counter() - started) * 1e6
            started = time.perf_counter()
            loaded.grammars.compile(replace(CONSTRAINT, spec=json.dumps({**SCHEMA, "title": "x"})))
            again_ms = (time.perf_counter() - started) * 1000
            print(
                f"grammar compile: first {compile_ms:.1f} ms (tokenizer loaded with the model), "
                f"another schema {again_ms:.1f} ms, cached {cached_us:.0f} us"
            )
            free_us, constrained_us = sampler_us_per_row(loaded, args.steps)
            print("\nsampler, one row, per token (best of 5 over the same logits)")
            print(f"  free        {free_us:8.1f} us")
            print(f"  constrained {constrained_us:8.1f} us  (+{constrained_us - free_us:.1f} us)")
            await engine_ms_per_step(loaded, 0, 8)  # warm-up
            print(f"\nengine, batch of {BATCH}, {args.steps} greedy steps, ms per decode step")
            print(
                "  constrained rows | "
                + " | ".join(f"run {i + 1}" for i in range(args.repeats))
                + " | median"
            )
            # Interleaved, so that drift in the machine's load hits every configuration alike.
            counts = (0, 1, BATCH)
            runs: dict[int, list[float]] = {c: [] for c in counts}
            for _ in range(args.repeats):
                for constrained in counts:
                    runs[constrained].append(
                        await engine_ms_per_step(loaded, constrained, args.steps)
                    )
            results = {}
            for constrained in counts:
                results[constrained] = statistics.median(runs[constrained])
                cells = " | ".join(f"{r:6.1f}" for r in runs[constrained])
                print(f"  {constrained:16d} | {cells} | {results[constrained]:6.1f}")
            for constrained in (1, BATCH):
                extra = results[constrained] - results[0]
                print(
                    f"  {constrained} constrained: {extra:+.2f} ms/step ({extra / results[0]:+.1%})"
                )
        finally:
            pool.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
