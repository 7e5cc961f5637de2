"""Engine metrics at a glance: the generation replicas' Prometheus endpoints, read by the edge
(EDGE_GENERATION_METRICS_URLS) and summed per model for the console's Models page.

The generation service exports them only with GENERATION_METRICS_PORT set; with no URL
configured, the summary says so instead of guessing where they are."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

PREFIX = "llmserve_generation_"
# Samples summed over replicas per model, by the name the summary gives them.
_SUMMED = {
    "running_sequences": "running",
    "waiting_sequences": "waiting",
    "kv_slots_used": "kv_slots_used",
    "kv_slots": "kv_slots",
    "kv_tokens": "kv_tokens",
    "prefix_cache_bytes": "prefix_cache_bytes",
    "prompt_tokens_total": "prompt_tokens",
    "generated_tokens_total": "generated_tokens",
    "prefix_cache_saved_tokens_total": "prefix_cache_saved_tokens",
}


def _fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (configured)
        return response.read().decode()


def summarize(texts: list[str]) -> dict[str, dict[str, float]]:
    """Per model: the gauges and counters above, summed over the replicas' exposition texts,
    and prefix-cache lookups by result (`prefix_cache_hits`, `prefix_cache_lookups`)."""
    models: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                model = sample.labels.get("model")
                name = sample.name.removeprefix(PREFIX)
                if model is None or not sample.name.startswith(PREFIX):
                    continue
                if name in _SUMMED:
                    models[model][_SUMMED[name]] += sample.value
                elif name == "prefix_cache_lookups_total":
                    models[model]["prefix_cache_lookups"] += sample.value
                    if sample.labels.get("result") == "hit":
                        models[model]["prefix_cache_hits"] += sample.value
    return {name: dict(values) for name, values in sorted(models.items())}


async def engine_summary(urls: list[str], timeout_s: float = 2.0) -> dict:
    """What the console shows; counters are cumulative (the browser derives tokens/s)."""
    results = await asyncio.gather(
        *(asyncio.to_thread(_fetch, url, timeout_s) for url in urls), return_exceptions=True
    )
    texts = []
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, Exception):
            logger.warning("engine metrics at %s unreachable: %s", url, result)
        else:
            texts.append(result)
    return {
        "configured": bool(urls),
        "replicas": len(urls),
        "reachable": len(texts),
        "sampled_at_ms": int(time.time() * 1000),
        "models": summarize(texts),
    }
