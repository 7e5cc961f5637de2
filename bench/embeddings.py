"""Embeddings per second through POST /v1/embeddings at batch 1, 8 and 32, against the same
model on PyTorch in-process (transformers + mean pooling + normalization, which is what
sentence-transformers computes for all-MiniLM-L6-v2), in one run.

    .venv/bin/python -m bench.embeddings [--base-url http://127.0.0.1:8080/v1] [--seconds 10]

Without --base-url it starts a registry, an embedding service and an edge of its own on free
ports (a temporary database; models come from the export cache). Needs the `export` extra
(torch, transformers), which `make setup` installs.

PyTorch runs with one thread and with one per core, and the ratio is taken against the
better of the two: on a busy machine PyTorch's OpenMP threads spin and lose most of their
speed when another process holds a core (ONNX Runtime runs here with spinning off).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from services.common.local import free_port
from services.registry.defaults import DEFAULT_EMBEDDING_MODEL, minilm_checkpoint

BATCHES = (1, 8, 32)
SUBJECTS = ["The harbour", "A tram", "The council", "Our bakery", "The old bridge", "Rain"]
ENDINGS = [
    "opened early this morning.",
    "was repaired after the storm that hit the coast last winter and flooded the lower town.",
    "is the subject of a long report on public spending, transport and housing in the city.",
    "made the evening news.",
]


def sentences(count: int) -> list[str]:
    """Varied sentences of roughly 6 to 30 tokens, like chunks and questions."""
    return [f"{SUBJECTS[i % 6]} {ENDINGS[i % 4]} ({i})" for i in range(count)]


@contextlib.contextmanager
def own_services() -> Iterator[tuple[str, str]]:
    """Registry + embedding service + edge on free ports; yields the edge's /v1 URL and the
    development API key the registry issued."""
    ports = {name: free_port() for name in ("registry", "embedding", "edge")}
    with tempfile.TemporaryDirectory() as data:
        env = {
            **os.environ,
            "REGISTRY_PORT": str(ports["registry"]),
            "REGISTRY_DB_PATH": f"{data}/registry.db",
            "REGISTRY_DEV_KEY_PATH": f"{data}/dev-api-key",
            "EMBEDDING_PORT": str(ports["embedding"]),
            "EMBEDDING_REGISTRY_ADDR": f"127.0.0.1:{ports['registry']}",
            "EMBEDDING_PRELOAD_MODELS": DEFAULT_EMBEDDING_MODEL,
            "EDGE_PORT": str(ports["edge"]),
            "EDGE_REGISTRY_ADDR": f"127.0.0.1:{ports['registry']}",
            "EDGE_EMBEDDING_ADDR": f"127.0.0.1:{ports['embedding']}",
        }
        children = []
        try:
            for module in ("services.registry", "services.embedding", "edge"):
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", module], env=env, stderr=subprocess.DEVNULL
                    )
                )
                # Each needs the previous one; the registry may import default models first.
                time.sleep(3)
            base = f"http://127.0.0.1:{ports['edge']}"
            key = wait_ready(base, children, Path(data) / "dev-api-key")
            yield f"{base}/v1", key
        finally:
            for child in reversed(children):
                child.terminate()
                child.wait(30)


def wait_ready(base: str, children: list[subprocess.Popen], key_path: Path) -> str:
    """Waits until an embedding goes through; returns the API key used."""
    body = b'{"model": "%s", "input": "warm up"}' % DEFAULT_EMBEDDING_MODEL.encode()
    for _ in range(600):
        if any(child.poll() is not None for child in children):
            raise RuntimeError("a service exited while starting")
        with contextlib.suppress(OSError):
            key = key_path.read_text().strip()
            request = urllib.request.Request(
                f"{base}/v1/embeddings",
                body,
                {"content-type": "application/json", "authorization": f"Bearer {key}"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return key
        time.sleep(0.5)
    raise RuntimeError("services did not become ready")


def rate(embed: Callable[[list[str]], np.ndarray], batch: int, seconds: float) -> float:
    """Inputs embedded per second, sending `batch` inputs per call, one call at a time."""
    texts = sentences(4096)
    embed(texts[:batch])  # warm-up
    done, calls, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds or calls < 3:
        offset = (calls * batch) % (len(texts) - batch)
        embed(texts[offset : offset + batch])
        done += batch
        calls += 1
    return done / (time.perf_counter() - started)


def pytorch_embedder() -> Callable[[list[str]], np.ndarray]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_checkpoint())
    model = AutoModel.from_pretrained(minilm_checkpoint()).eval()

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            tokens = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()

    return embed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    import base64

    import httpx
    import torch

    reference = pytorch_embedder()
    with contextlib.ExitStack() as stack:
        if args.base_url:
            base_url, key = args.base_url, args.api_key
        else:
            base_url, key = stack.enter_context(own_services())
        client = stack.enter_context(
            httpx.Client(timeout=120, headers={"authorization": f"Bearer {key}"})
        )

        def served(texts: list[str]) -> np.ndarray:
            # base64, the wire format the openai SDK asks for; decoded as the SDK does.
            response = client.post(
                f"{base_url}/embeddings",
                json={
                    "model": DEFAULT_EMBEDDING_MODEL,
                    "input": texts,
                    "encoding_format": "base64",
                },
            )
            response.raise_for_status()
            data = response.json()["data"]
            return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])

        check = served(sentences(4))
        cosine = (check * reference(sentences(4))).sum(axis=1).min()
        cores = os.cpu_count() or 1
        print(f"cores {cores}, min cosine served vs PyTorch {cosine:.6f}")
        print(
            f"{'batch':>5} {'served emb/s':>13} {'PyTorch 1 thread':>17} "
            f"{f'PyTorch {cores} threads':>18} {'ratio to best':>14}"
        )
        for batch in BATCHES:
            ours = rate(served, batch, args.seconds)
            theirs = []
            for threads in (1, cores):
                torch.set_num_threads(threads)
                theirs.append(rate(reference, batch, args.seconds))
            print(
                f"{batch:>5} {ours:>13.1f} {theirs[0]:>17.1f} {theirs[1]:>18.1f} "
                f"{ours / max(theirs):>14.2f}"
            )


if __name__ == "__main__":
    main()
