"""Our stack against llama.cpp's own llama-server: the same GGUF on the same machine, in one run.

llama-server is the reference a user would otherwise run for this model (continuous batching
over parallel slots, a prompt cache, an OpenAI API), so its figures are the bar for ours. Both
systems are driven through the same client code over their OpenAI HTTP API: streaming chat
completions, greedy, `ignore_eos`, a fixed `max_tokens`. Measured for each system:

  1. single-stream decode tokens/s at prompts of about 128, 1.1k, 4.3k and 7.5k tokens, 64 new
     tokens: (tokens - 1) / (last token time - first token time), median of 3;
  2. cold TTFT: every prompt of (1) is distinct from its first user token (only the chat
     template's ~30-token default system prompt is common), so no prompt cache helps; the
     ~4.3k row is the headline figure;
  3. TTFT with a shared ~2k-token system prompt: sequential requests with different short user
     messages; the first request, and the median of the next 4 (what a prefix cache saves);
  4. aggregate tokens/s with 8 and 16 concurrent streams of 128 new tokens, distinct short
     prompts: all tokens / (last token - first request sent), median of 3;
  5. inter-token latency of running streams while a long prompt arrives: ITL_STREAMS streams
     decode; once each has ITL_WARM_TOKENS tokens a cold ~4.3k-token prompt is sent; p95 of
     the running streams' gaps between tokens from then until its first token, against the
     p95 before it arrived (what chunked prefill protects);
  6. resident memory after the runs: llama-server's process, the stack's generation process
     (the launcher's child running `services.generation`) and, for context, the whole stack.

This machine is shared, so: requests alternate between the systems one measurement at a time,
so drift in background load hits both alike; each waits until other processes leave the cores
idle, and is taken again (on a fresh prompt) if they did not meanwhile; every row reports the
other processes' load it ran under; tables report medians and stack / llama-server ratios.

  .venv/bin/python -m bench.vs_llama_server [--quick] [--systems stack,llama]
                                            [--llama-server PATH] [--out PATH]
                                            [--stack-env NAME=VALUE ...]

llama-server runs as `llama-server -m GGUF --host 127.0.0.1 --port P -c 65536 -np 8 -t 2
--jinja` (../shared/peers/llama-server.sh builds it); the stack as `make run` starts it
(python -m services.launcher, default settings, on free ports and a fresh database). Prints
the table and writes it with the command, date, commit and load average to --out
(docs/benchmarks/vs-llama-server.md) and a plot beside it (.png).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.generation import TOPICS, Result, Stream, prompts  # noqa: E402
from services.common.domain import ChatMessage  # noqa: E402
from services.common.healthcheck import http_ok  # noqa: E402
from services.common.local import free_port, isolated_stack_env  # noqa: E402
from services.common.records import ModelKind  # noqa: E402
from services.generation.chat_template import ChatTemplate  # noqa: E402
from services.generation.tokenizer import TextTokenizer  # noqa: E402
from services.registry.defaults import DEFAULT_CHAT_MODEL, smollm2_gguf  # noqa: E402
from services.registry.importer import ModelImporter  # noqa: E402
from services.registry.settings import RegistrySettings  # noqa: E402

T = TypeVar("T")

LLAMA_SERVER = Path.home() / ".cache/llm-peers/llama.cpp-0.3.36/build/bin/llama-server"
LLAMA_FLAGS = ["-c", "65536", "-np", "8", "-t", "2", "--jinja"]
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "vs-llama-server.md"
SYSTEMS = ("stack", "llama")
LABELS = {"stack": "stack", "llama": "llama-server"}
START_TIMEOUT_S = 300.0
DECODE_TOKENS = 64
CONCURRENT_TOKENS = 128
SHARED_SYSTEM_TOKENS = 2048
FOLLOW_UPS = 4
# Enough tokens that a TTFT is not cut short by the end of the reply.
SHARED_MAX_TOKENS = 8
ITL_STREAMS = 4
ITL_WARM_TOKENS = 16
# Long enough to outlast the long prompt's prefill on both systems.
ITL_STREAM_TOKENS = 512
ITL_LONG_PROMPT = 4300
# Before each measured request: wait until other processes use fewer cores than this, for at
# most this long (then measure anyway, and count it).
QUIET_CORES = 0.3
QUIET_WAIT_S = 120.0
# A measurement during which they took more is taken again, up to this many tries in all.
TRIES = 3


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    lengths: tuple[int, ...]
    repeats: int
    concurrency: tuple[int, ...]


FULL = Plan(lengths=(128, 1100, 4300, 7500), repeats=3, concurrency=(8, 16))
QUICK = Plan(lengths=(128, 4300), repeats=1, concurrency=(8, 16))


# Prompts


class PromptMaker:
    """Chat messages of about a given length in the model's own tokens (the stack's tokenizer
    and template; llama-server reads the same vocabulary and template from the GGUF, and both
    report the prompt tokens they saw). Every text starts with its own serial number, so no
    two share a prefix beyond the chat template's."""

    def __init__(self, tokenizer: TextTokenizer, template: ChatTemplate):
        self.tokenizer = tokenizer
        self.template = template
        self.serial = itertools.count(1)

    def count(self, messages: list[dict]) -> int:
        chat = [ChatMessage(m["role"], m["content"]) for m in messages]
        return len(self.tokenizer.encode(self.template.render(chat)))

    def log_text(self, tokens: int) -> str:
        """A distinct made-up log of about `tokens` tokens."""
        serial = next(self.serial)
        rng = random.Random(serial)
        parts, total = [f"Log {serial}."], 0
        while True:
            entry = (
                f" Entry {len(parts)}: {rng.choice(TOPICS)} reported {rng.randint(2, 9999)} "
                f"sightings on day {rng.randint(1, 365)}."
            )
            size = len(self.tokenizer.encode(entry))
            if total + size / 2 > tokens:
                return "".join(parts)
            parts.append(entry)
            total += size

    def long_user(self, tokens: int) -> list[dict]:
        """One user message whose whole rendered prompt is about `tokens` tokens."""
        ask = "\nSummarize the log above in detail."
        overhead = self.count([{"role": "user", "content": f"Log 1.{ask}"}])
        return [{"role": "user", "content": self.log_text(max(tokens - overhead, 1)) + ask}]

    def shared_system(self, tokens: int) -> str:
        return "You answer questions about this log." + self.log_text(tokens)

    @staticmethod
    def follow_up(system: str, index: int) -> list[dict]:
        question = f"What does the log say about {TOPICS[index % len(TOPICS)]}?"
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]

    def short_users(self, count: int) -> list[list[dict]]:
        """`count` distinct short prompts (bench/generation.py's), numbered so a rerun does not
        find them in llama-server's prompt cache."""
        serial = next(self.serial)
        return [[{"role": "user", "content": f"({serial}) {p}"}] for p in prompts(count)]


# Systems under test


@dataclass
class Reply(Stream):
    """One streamed completion: when it was sent, when each content chunk came, and the token
    counts the server reported (`stream_options.include_usage`)."""

    prompt_tokens: int = 0

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.started

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.tokens - 1) / (self.token_times[-1] - self.token_times[0])


class Server:
    """A system under test behind its OpenAI API; subclasses start it (a process logging to
    `log`) and say when it is ready."""

    name: str
    base_url: str
    model: str
    headers: dict[str, str]
    process: subprocess.Popen
    log: Path

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.5)

    async def chat(
        self,
        client: httpx.AsyncClient,
        messages: list[dict],
        max_tokens: int,
        reply: Reply | None = None,
    ) -> Reply:
        """Streams one completion into `reply` (a fresh one if None), which the caller may
        watch as chunks arrive."""
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        reply = reply or Reply(time.perf_counter())
        url = f"{self.base_url}/v1/chat/completions"
        async with client.stream("POST", url, json=body, headers=self.headers) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    reply.token_times.append(time.perf_counter())
                if chunk.get("usage"):
                    reply.tokens = chunk["usage"]["completion_tokens"]
                    reply.prompt_tokens = chunk["usage"]["prompt_tokens"]
        if reply.tokens != max_tokens or not reply.token_times:
            raise RuntimeError(f"{self.name}: {reply.tokens} of {max_tokens} tokens")
        return reply

    def memory_mib(self) -> dict[str, float]:
        """Resident memory now, by what it measures."""
        raise NotImplementedError

    def close(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def rss_mib(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


class LlamaServer(Server):
    name = "llama"

    def __init__(self, binary: Path, gguf: Path, workdir: Path):
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.model = gguf.name
        self.headers = {}
        self.log = workdir / "llama-server.log"
        argv = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                argv + LLAMA_FLAGS, stdout=out, stderr=subprocess.STDOUT
            )

    def ready(self) -> bool:
        return http_ok(f"{self.base_url}/health", 1.0)

    def memory_mib(self) -> dict[str, float]:
        return {"serving process": rss_mib(psutil.Process(self.process.pid))}


class StackServer(Server):
    """`python -m services.launcher` as `make run` starts it, on free ports and a fresh
    database and retrieval directory in `workdir` (as tests/conftest.py's `stack`)."""

    name = "stack"

    def __init__(self, workdir: Path, settings: dict[str, str]):
        env = {**isolated_stack_env(workdir, "bench"), **settings}
        self.base_url = f"http://127.0.0.1:{env['EDGE_PORT']}"
        self.model = DEFAULT_CHAT_MODEL
        self.key_path = Path(env["REGISTRY_DEV_KEY_PATH"])
        self.log = workdir / "stack.log"
        self.headers = {}
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.launcher"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        if "ready: OpenAI API" not in self.log.read_text():
            return False
        self.headers = {"Authorization": f"Bearer {self.key_path.read_text().strip()}"}
        return True

    def memory_mib(self) -> dict[str, float]:
        launcher = psutil.Process(self.process.pid)
        children = launcher.children(recursive=True)
        generation = [c for c in children if "services.generation" in c.cmdline()]
        return {
            "serving process": sum(rss_mib(p) for p in generation),
            "all processes": sum(rss_mib(p) for p in [launcher, *children]),
        }


# Measurements


def medians(replies: dict[str, list[Reply]], value: Callable[[Reply], float]) -> dict[str, float]:
    return {name: statistics.median(map(value, rs)) for name, rs in replies.items()}


@dataclass
class Metric:
    """One row of the report: a value per system."""

    label: str
    unit: str
    # For rows where lower is better, the word that says so ("faster", "smaller").
    lower_is: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    # CPU cores other processes kept busy meanwhile (OtherLoad); None where not measured.
    other_cores: float | None = None


def busy_cpu_s() -> float:
    """CPU seconds the machine has spent busy since boot, all cores (steal included: on a VM
    it is time other guests took)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - t.iowait - t.guest - t.guest_nice  # guest is counted in user


def tree_cpu_s(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


class OtherLoad:
    """How many CPU cores processes other than this bench and its children (the systems under
    test) kept busy, on average, over the stretches of time spent inside `with` this object:
    the noise the shared machine added to a measurement."""

    def __init__(self):
        self.other_s = 0.0
        self.wall_s = 0.0

    @property
    def cores(self) -> float:
        return self.other_s / self.wall_s if self.wall_s else 0.0

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        return time.monotonic(), busy_cpu_s(), tree_cpu_s(psutil.Process())

    def __enter__(self) -> OtherLoad:
        self.start = self._sample()
        return self

    def __exit__(self, *exc_info) -> None:
        (wall0, busy0, own0), (wall1, busy1, own1) = self.start, self._sample()
        self.wall_s += wall1 - wall0
        self.other_s += max(0.0, (busy1 - busy0) - (own1 - own0))


def prompt_label(replies: dict[str, list[Reply]]) -> str:
    """The range of prompt tokens the systems counted (each request has a prompt of its own)."""
    counts = [r.prompt_tokens for rs in replies.values() for r in rs]
    low, high = min(counts), max(counts)
    return f"{low} tokens" if low == high else f"{low}-{high} tokens"


class Bench:
    """Runs the measurements on every system and keeps the rows of the report."""

    def __init__(self, servers: list[Server], maker: PromptMaker, plan: Plan):
        self.servers = servers
        self.maker = maker
        self.plan = plan
        self.metrics: list[Metric] = []
        # Points for the plot: system -> [(prompt tokens or streams, value)].
        self.decode_curve: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        self.ttft_curve: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        self.concurrency_curve: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        # Seconds spent waiting for the machine to quiet down; measurements taken again because
        # other processes were busy meanwhile; and kept anyway after the last try.
        self.quiet_wait_s = 0.0
        self.retried = 0
        self.kept_noisy = 0

    def add(
        self,
        label: str,
        unit: str,
        values: dict[str, float],
        other_cores: float | None,
        lower_is: str | None = None,
    ) -> None:
        self.metrics.append(Metric(label, unit, lower_is, values, other_cores))
        shown = {name: round(value, 3) for name, value in values.items()}
        print(f"{label} ({unit}): {json.dumps(shown)}; other load {other_cores}", flush=True)

    async def quiet(self) -> None:
        """Waits, for at most QUIET_WAIT_S, until other processes leave the cores idle enough:
        a burst of someone else's work would otherwise land on one system and not the other."""
        started = time.monotonic()
        while time.monotonic() - started < QUIET_WAIT_S:
            with OtherLoad() as probe:
                await asyncio.sleep(1.0)
            if probe.cores < QUIET_CORES:
                break
        self.quiet_wait_s += time.monotonic() - started

    async def clean(self, measure: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        """Runs `measure` once the machine is quiet, and again (a fresh call each time, so no
        cache sees a repeat) while other processes took QUIET_CORES or more during it, at most
        TRIES times; returns the quietest result and the other load it ran under (cores)."""
        tries = []
        for _ in range(TRIES):
            await self.quiet()
            with OtherLoad() as load:
                result = await measure()
            tries.append((load.cores, result))
            if load.cores < QUIET_CORES:
                break
            self.retried += 1
        cores, result = min(tries, key=lambda t: t[0])
        self.kept_noisy += cores >= QUIET_CORES
        return result, cores

    async def warm_up(self, client: httpx.AsyncClient) -> None:
        messages = self.maker.short_users(1)[0]
        for server in self.servers:
            await server.chat(client, messages, 8)

    async def single_stream(self, client: httpx.AsyncClient, length: int) -> None:
        """Decode tokens/s and cold TTFT at one prompt length, median of the repeats; the
        systems take turns, each request on a prompt of its own."""
        replies: dict[str, list[Reply]] = {s.name: [] for s in self.servers}
        loads = []
        for _ in range(self.plan.repeats):
            for server in self.servers:
                reply, cores = await self.clean(
                    lambda s=server: s.chat(client, self.maker.long_user(length), DECODE_TOKENS)
                )
                replies[server.name].append(reply)
                loads.append(cores)
        prompt = prompt_label(replies)
        decode = medians(replies, lambda r: r.decode_tokens_per_s)
        ttft = medians(replies, lambda r: r.ttft_s)
        self.add(f"decode, 1 stream, prompt {prompt}", "tokens/s", decode, max(loads))
        self.add(f"cold TTFT, prompt {prompt}", "s", ttft, max(loads), lower_is="faster")
        tokens = statistics.median(r.prompt_tokens for rs in replies.values() for r in rs)
        for name in replies:
            self.decode_curve[name].append((tokens, decode[name]))
            self.ttft_curve[name].append((tokens, ttft[name]))

    async def conversation(
        self, client: httpx.AsyncClient, server: Server
    ) -> tuple[list[Reply], float]:
        """A shared system prompt nobody has sent yet, then FOLLOW_UPS other questions on it,
        in sequence; the replies and the most other load any of them ran under."""
        systems = []
        questions = itertools.count(1)

        async def first() -> Reply:
            # A retried first request needs a system prompt of its own, or it would be warm.
            systems.append(self.maker.shared_system(SHARED_SYSTEM_TOKENS))
            messages = self.maker.follow_up(systems[-1], 0)
            return await server.chat(client, messages, SHARED_MAX_TOKENS)

        async def follow_up() -> Reply:
            messages = self.maker.follow_up(systems[-1], next(questions))
            return await server.chat(client, messages, SHARED_MAX_TOKENS)

        results = [await self.clean(first)]
        results += [await self.clean(follow_up) for _ in range(FOLLOW_UPS)]
        return [reply for reply, _ in results], max(cores for _, cores in results)

    async def shared_system(self, client: httpx.AsyncClient) -> None:
        """TTFT of sequential requests that share a long system prompt: the first one, and the
        median of the ones after it."""
        replies, loads = {}, []
        for server in self.servers:
            replies[server.name], cores = await self.conversation(client, server)
            loads.append(cores)
        firsts = {name: rs[0].ttft_s for name, rs in replies.items()}
        thens = medians({name: rs[1:] for name, rs in replies.items()}, lambda r: r.ttft_s)
        where = f"shared system prompt, {prompt_label(replies)}"
        self.add(f"TTFT, {where}: first request", "s", firsts, max(loads), lower_is="faster")
        self.add(f"TTFT, {where}: median of next {FOLLOW_UPS}", "s", thens, max(loads), "faster")

    async def concurrent(self, client: httpx.AsyncClient, streams: int) -> None:
        """Aggregate tokens/s of `streams` concurrent streams, median of the repeats."""

        async def burst(server: Server) -> float:
            batch = self.maker.short_users(streams)
            replies = await asyncio.gather(
                *(server.chat(client, m, CONCURRENT_TOKENS) for m in batch)
            )
            return Result(server.name, streams, replies).tokens_per_s

        rates: dict[str, list[float]] = {s.name: [] for s in self.servers}
        loads = []
        for _ in range(self.plan.repeats):
            for server in self.servers:
                rate, cores = await self.clean(lambda s=server: burst(s))
                rates[server.name].append(rate)
                loads.append(cores)
        rate = {name: statistics.median(values) for name, values in rates.items()}
        label = f"aggregate, {streams} streams x {CONCURRENT_TOKENS} tokens"
        self.add(label, "tokens/s", rate, max(loads))
        for name, value in rate.items():
            self.concurrency_curve[name].append((streams, value))

    async def itl_under_long_prompt(self, client: httpx.AsyncClient) -> None:
        """p95 inter-token gap of running streams before and while a long prompt is prefilled."""

        async def measure(server: Server) -> tuple[float, float]:
            started = time.perf_counter()
            watched = [Reply(started) for _ in range(ITL_STREAMS)]
            replies = [
                asyncio.ensure_future(server.chat(client, m, ITL_STREAM_TOKENS, reply))
                for m, reply in zip(self.maker.short_users(ITL_STREAMS), watched, strict=True)
            ]
            while not all(len(r.token_times) >= ITL_WARM_TOKENS for r in watched):
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"{server.name}: streams did not start")
                await asyncio.sleep(0.01)
            arrived = time.perf_counter()
            long = await server.chat(client, self.maker.long_user(ITL_LONG_PROMPT), 1)
            prefilled = long.token_times[0]
            done = await asyncio.gather(*replies)
            before, during = [], []
            for reply in done:
                gaps = zip(reply.token_times, reply.token_times[1:], strict=False)
                for previous, current in gaps:
                    if current <= arrived:
                        before.append(current - previous)
                    elif previous < prefilled:
                        during.append(current - previous)
            return _p95(before), _p95(during)

        results, loads = {}, []
        for server in self.servers:
            results[server.name], cores = await self.clean(lambda s=server: measure(s))
            loads.append(cores)
        where = f"{ITL_STREAMS} streams"
        self.add(
            f"ITL p95, {where}, before a long prompt arrives",
            "s",
            {name: r[0] for name, r in results.items()},
            max(loads),
            lower_is="faster",
        )
        self.add(
            f"ITL p95, {where}, while a {ITL_LONG_PROMPT}-token prompt is prefilled",
            "s",
            {name: r[1] for name, r in results.items()},
            max(loads),
            lower_is="faster",
        )

    def memory(self) -> None:
        readings = {server.name: server.memory_mib() for server in self.servers}
        self.add(
            "RSS after the runs: llama-server / stack's generation process",
            "MiB",
            {name: reading["serving process"] for name, reading in readings.items()},
            None,
            lower_is="smaller",
        )
        if "stack" in readings:
            whole = {"stack": readings["stack"]["all processes"]}
            self.add("RSS after the runs: whole stack (launcher + 5 services)", "MiB", whole, None)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=max(self.plan.concurrency) + 4)
        async with httpx.AsyncClient(timeout=900, limits=limits) as client:
            await self.warm_up(client)
            for length in self.plan.lengths:
                await self.single_stream(client, length)
            await self.shared_system(client)
            for streams in self.plan.concurrency:
                await self.concurrent(client, streams)
            await self.itl_under_long_prompt(client)
        self.memory()


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else float("nan")


# Report


def ratio_cell(metric: Metric) -> str:
    if not all(name in metric.values for name in SYSTEMS):
        return ""
    stack, llama = metric.values["stack"], metric.values["llama"]
    ratio = stack / llama
    if metric.lower_is is None:
        return f"{ratio:.2f}"
    better, factor = ("stack", llama / stack) if stack < llama else ("llama-server", ratio)
    return f"{ratio:.2f} ({better} {factor:.2f}x {metric.lower_is})"


def table(metrics: list[Metric], systems: list[str]) -> str:
    header = ["measure", "unit", *(LABELS[s] for s in systems)]
    if len(systems) == 2:
        header.append("stack / llama-server")
    header.append("other load (cores)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        cells = [metric.label, metric.unit]
        cells += [f"{metric.values[s]:.2f}" if s in metric.values else "" for s in systems]
        if len(systems) == 2:
            cells.append(ratio_cell(metric))
        cells.append("" if metric.other_cores is None else f"{metric.other_cores:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown CPU",
    )  # fmt: skip
    return f"{os.cpu_count()} CPU cores ({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB"


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass
class RunInfo:
    command: str
    started: str
    commit: str
    # Uncommitted changes to what the stack runs (others edit the working tree).
    dirty: str
    load_before: str
    llama_server: str
    gguf: str
    load_after: str = ""
    # HEAD when the run ended, if it moved while the run went (the stack runs the work tree).
    commit_after: str = ""

    def finish(self) -> None:
        self.load_after = load_average()
        head = git("rev-parse", "--short", "HEAD")
        self.commit_after = (
            "" if head == self.commit else f"; HEAD moved to `{head}` during the run"
        )


def run_info(llama_server: Path) -> RunInfo:
    dirty = git("status", "--porcelain", "--", "services", "edge", "llmserve", "pyproject.toml")
    return RunInfo(
        command=" ".join([".venv/bin/python", "-m", "bench.vs_llama_server", *sys.argv[1:]]),
        started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        commit=git("rev-parse", "--short", "HEAD"),
        dirty="; ".join(dirty.splitlines()) if dirty else "none",
        load_before=load_average(),
        llama_server=str(llama_server),
        gguf=smollm2_gguf().name,
    )


def markdown(
    info: RunInfo, bench: Bench, systems: list[str], png: str, stack_settings: dict[str, str]
) -> str:
    flags = " ".join(LLAMA_FLAGS)
    settings = (
        "with " + ", ".join(f"`{k}={v}`" for k, v in stack_settings.items()) + ", otherwise"
        if stack_settings
        else "with"
    )
    plan = bench.plan
    return f"""# Our stack vs llama.cpp's llama-server ({DEFAULT_CHAT_MODEL}, same GGUF)

`{info.command}`

- date: {info.started}; commit measured: `{info.commit}`{info.commit_after} (uncommitted
  changes under services/, edge/: {info.dirty})
- machine: {machine()}; load average (1, 5, 15 min) before: {info.load_before}, after:
  {info.load_after}
- llama-server: `llama-server -m {info.gguf} --host 127.0.0.1 --port P {flags}`
  ({info.llama_server}); stack: `python -m services.launcher` {settings} default settings
  (int4 weights, the edge -> gRPC -> engine path).
- both over their OpenAI API: streaming chat completions, temperature 0, `ignore_eos`;
  systems alternate request by request (the shared-system-prompt rows: conversation by
  conversation). Prompts: {", ".join(map(str, plan.lengths))} tokens
  targeted (the rows show what the servers counted), {plan.repeats} repeat(s), medians.
- noise: before each measured request (or burst) the bench waited for other processes to use
  under {QUIET_CORES} cores (at most {QUIET_WAIT_S:.0f} s; {bench.quiet_wait_s:.0f} s in all),
  and took it again, on a fresh prompt, when they used more meanwhile (up to {TRIES} tries;
  {bench.retried} retries, {bench.kept_noisy} kept above the threshold).

{table(bench.metrics, systems)}

How each row is measured (`bench/vs_llama_server.py`'s docstring has the details):
- decode: one stream, {DECODE_TOKENS} new tokens; (tokens - 1) / (time from the first to the
  last content chunk).
- cold TTFT: the same requests; each prompt is distinct from its first user token, so no
  prompt cache helps (the template's ~30-token default system prompt is common to all).
- shared system prompt: a ~{SHARED_SYSTEM_TOKENS}-token system prompt, then sequential requests
  with different short user questions ({SHARED_MAX_TOKENS} new tokens each).
- aggregate: N concurrent streams, {CONCURRENT_TOKENS} new tokens each, distinct short prompts;
  all tokens / (last token - first request sent). llama-server has 8 slots (`-np 8`), so at 16
  streams half of the requests wait for a slot.
- RSS: after all runs; llama-server's includes its KV cache, allocated up front for
  `-c 65536` (8 slots x 8192 tokens).
- other load: CPU cores that processes other than this bench and the two systems kept busy
  (steal included), on average over a request, the worst among the requests a row keeps. The
  machine is shared, and llama-server's `-t 2` threads slow down sharply when another process
  takes a core (several-fold at one stream), which is why rows are retried above.
- ratios are stack / llama-server: above 1 the stack is faster for tokens/s; for TTFT and RSS
  the cell says which side is better and by how much.

![tokens/s vs prompt length and concurrency]({png})
"""


def plot(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (decode, ttft, concurrent) = plt.subplots(1, 3, figsize=(15, 4))
    curves = [
        (decode, bench.decode_curve, "prompt tokens", "decode tokens/s, 1 stream"),
        (ttft, bench.ttft_curve, "prompt tokens", "cold TTFT (s)"),
        (concurrent, bench.concurrency_curve, "concurrent streams", "aggregate tokens/s"),
    ]
    for axes, curve, xlabel, ylabel in curves:
        for name, points in curve.items():
            axes.plot(*zip(*points, strict=True), marker="o", label=LABELS[name])
        axes.set(xlabel=xlabel, ylabel=ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def prompt_maker() -> PromptMaker:
    record = ModelImporter(RegistrySettings().cache_dir).import_model(
        DEFAULT_CHAT_MODEL, ModelKind.CHAT, smollm2_gguf(), lambda *_: None
    )
    tokenizer = TextTokenizer(Path(record.artifact_dir))
    return PromptMaker(tokenizer, ChatTemplate(record.chat_template, tokenizer.special_tokens))


@contextlib.contextmanager
def started(
    systems: list[str], llama_server: Path, workdir: Path, stack_settings: dict[str, str]
) -> Iterator[list[Server]]:
    """The systems, each started (llama-server first: it loads in seconds) and stopped after."""
    builders = {
        "llama": lambda: LlamaServer(llama_server, smollm2_gguf(), workdir),
        "stack": lambda: StackServer(workdir, stack_settings),
    }
    with contextlib.ExitStack() as stack:
        servers = []
        for name in sorted(systems, key=lambda s: s != "llama"):
            server = builders[name]()
            stack.callback(server.close)
            server.wait_ready()
            servers.append(server)
        yield sorted(servers, key=lambda s: SYSTEMS.index(s.name))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two prompt lengths, one repeat")
    parser.add_argument("--systems", default="stack,llama", help="comma separated: stack,llama")
    parser.add_argument("--llama-server", type=Path, default=LLAMA_SERVER)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report")
    parser.add_argument(
        "--stack-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the stack (e.g. GENERATION_KV_CACHE=int8); repeatable",
    )
    args = parser.parse_args()
    if not all("=" in setting for setting in args.stack_env):
        parser.error("--stack-env takes NAME=VALUE")
    args.stack_settings = dict(setting.split("=", 1) for setting in args.stack_env)
    args.systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    if not args.systems:
        parser.error(f"--systems: choose from {','.join(SYSTEMS)}")
    return args


def main() -> None:
    args = parse_args()
    plan = QUICK if args.quick else FULL
    info = run_info(args.llama_server)
    maker = prompt_maker()
    with tempfile.TemporaryDirectory(prefix="llmserve-vs-llama-") as workdir:
        with started(
            args.systems, args.llama_server, Path(workdir), args.stack_settings
        ) as servers:
            bench = Bench(servers, maker, plan)
            asyncio.run(bench.run())
    info.finish()
    png = args.out.with_suffix(".png")
    report = markdown(info, bench, args.systems, png.name, args.stack_settings)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    plot(bench, png)


if __name__ == "__main__":
    main()
