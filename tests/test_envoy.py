"""A real Envoy, with the project's deploy/envoy/envoy.yaml, in front of the edge and two
generation replicas, as `GENERATION_REPLICAS=2 make run` starts them (the compose topology).

Shows: OpenAI requests and SSE streams pass through the HTTP listener; gRPC calls through
the gRPC listener reach both replicas; a replica killed mid-run is taken out while calls keep
succeeding, and comes back when the launcher restarts it; streams outlive Envoy's default
15 s route timeout and arrive unbuffered.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest
import requests
from conftest import REPO, launched_stack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmserve.common.v1 import common_pb2
from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.local import free_port
from services.launcher.envoy import cluster_hosts
from services.registry.defaults import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL

# Envoy's default route timeout is 15 s; a stream must outlive it.
LONG_STREAM_S = 20.0
# Greedy SmolLM2 answers this with more than 700 tokens, a minute or more here.
LONG_PROMPT = "Write a very long essay about the history of Rome."
UPSTREAM_HEADER = "x-llmserve-upstream"
STARTED = re.compile(r"started (generation-\d+) \(pid (\d+)\) on (\S+)")


@dataclass
class EnvoyStack:
    process: subprocess.Popen
    log_path: Path
    http_base: str
    grpc_addr: str
    admin_port: int
    data: Path

    @property
    def api_key(self) -> str:
        return (self.data / "dev-api-key").read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def replicas(self) -> dict[str, tuple[int, str]]:
        """generation-N -> (pid, address) of its latest start."""
        return {name: (int(pid), address) for name, pid, address in STARTED.findall(self.log())}

    def generation_hosts(self) -> dict[str, bool]:
        return {host.address: host.healthy for host in cluster_hosts(self.admin_port)["generation"]}


@pytest.fixture(scope="module")
def envoy_stack(tmp_path_factory, chat_model) -> EnvoyStack:
    data = tmp_path_factory.mktemp("envoy-stack")
    http_port, grpc_port, admin_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "GENERATION_REPLICAS": "2",
        "REGISTRY_DB_PATH": str(data / "registry.db"),
        "REGISTRY_PORT": str(free_port()),
        "EDGE_PORT": str(http_port),
        "ENVOY_GRPC_PORT": str(grpc_port),
        "ENVOY_ADMIN_PORT": str(admin_port),
        "EMBEDDING_PORT": str(free_port()),
        "RETRIEVAL_PORT": str(free_port()),
        "RETRIEVAL_DATA_DIR": str(data / "retrieval"),
        "REGISTRY_DEV_KEY_PATH": str(data / "dev-api-key"),
        "EDGE_ADMIN_TOKEN": "test-admin-token",
        # Two replicas share two cores.
        "GENERATION_INTRA_OP_THREADS": "1",
    }
    log_path = data / "stack.log"
    with launched_stack(env, log_path) as process:
        yield EnvoyStack(
            process,
            log_path,
            f"http://127.0.0.1:{http_port}",
            f"127.0.0.1:{grpc_port}",
            admin_port,
            data,
        )


@pytest.fixture(scope="module")
def channel(envoy_stack):
    with grpc.insecure_channel(envoy_stack.grpc_addr) as channel:
        yield channel


def user(text: str) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role="user", content=text)]


def tokenize(stub) -> str:
    """One idempotent unary call; returns the replica that answered."""
    response, call = stub.Tokenize.with_call(
        generation_pb2.TokenizeRequest(model=DEFAULT_CHAT_MODEL, messages=user("Hi")), timeout=30
    )
    assert response.token_ids
    return dict(call.initial_metadata())[UPSTREAM_HEADER]


def generate(stub, text: str, max_tokens: int, timeout_s: float = 120):
    return stub.Generate(
        generation_pb2.GenerateRequest(
            model=DEFAULT_CHAT_MODEL,
            messages=user(text),
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        ),
        timeout=timeout_s,
    )


def running_sequences(address: str) -> int:
    with grpc.insecure_channel(address) as direct:
        response = generation_pb2_grpc.GenerationServiceStub(direct).ListLoadedModels(
            generation_pb2.ListLoadedModelsRequest(), timeout=10
        )
    return sum(m.running_sequences + m.waiting_sequences for m in response.models)


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting until {what}")
        time.sleep(0.2)


def wait_until_both_replicas_healthy(envoy_stack) -> None:
    """Both generation replicas healthy in Envoy's admin view: a replica restarted by an earlier
    test may still be loading its model, or still be ejected."""
    wait_for(
        lambda: list(envoy_stack.generation_hosts().values()) == [True, True],
        180,
        "Envoy reports both generation replicas healthy",
    )


def replicas_seen(outcomes: list[tuple[float, str]], since: float = 0.0) -> Counter:
    """The outcomes (replica, or error) of the calls that started after `since`, counted."""
    return Counter(upstream for started, upstream in list(outcomes) if started > since)


def test_openai_sdk_and_sse_through_the_http_listener(envoy_stack):
    client = openai.OpenAI(
        base_url=f"{envoy_stack.http_base}/v1", api_key=envoy_stack.api_key, max_retries=0
    )
    assert DEFAULT_CHAT_MODEL in [m.id for m in client.models.list()]
    raw = client.chat.completions.with_raw_response.create(
        model=DEFAULT_CHAT_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
    )
    assert raw.headers["server"] == "envoy"  # it did pass through Envoy
    assert "Paris" in raw.parse().choices[0].message.content

    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first, *middle, finish, usage_only = chunks
    assert first.choices[0].delta.role == "assistant"
    assert "Paris" in "".join(c.choices[0].delta.content for c in middle)
    assert finish.choices[0].finish_reason == "stop"
    assert usage_only.choices == [] and usage_only.usage.completion_tokens > 0

    # Errors keep their status and OpenAI envelope through Envoy.
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"


def test_streams_outlive_envoy_default_timeout_and_arrive_unbuffered(envoy_stack, channel):
    """One SSE stream through the HTTP listener and one Generate through the gRPC listener,
    each read for LONG_STREAM_S, then closed by the client."""

    def sse_stream() -> list[float]:
        arrivals = []
        started = time.monotonic()
        with requests.post(
            f"{envoy_stack.http_base}/v1/chat/completions",
            json={
                "model": DEFAULT_CHAT_MODEL,
                "messages": [{"role": "user", "content": LONG_PROMPT}],
                "temperature": 0,
                "max_tokens": 4000,
                "stream": True,
            },
            headers={"Authorization": f"Bearer {envoy_stack.api_key}"},
            stream=True,
            timeout=60,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines(decode_unicode=True):
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                assert payload != "[DONE]", "stream ended early"
                chunk = json.loads(payload)
                assert "error" not in chunk, chunk
                assert chunk["choices"][0]["finish_reason"] is None, "stream ended early"
                arrivals.append(time.monotonic() - started)
                if arrivals[-1] > LONG_STREAM_S:
                    break
        return arrivals

    def grpc_stream() -> list[float]:
        arrivals = []
        started = time.monotonic()
        call = generate(generation_pb2_grpc.GenerationServiceStub(channel), LONG_PROMPT, 4000)
        for response in call:
            assert response.finish_reason == generation_pb2.FINISH_REASON_UNSPECIFIED
            arrivals.append(time.monotonic() - started)
            if arrivals[-1] > LONG_STREAM_S:
                break
        call.cancel()
        return arrivals

    with ThreadPoolExecutor(2) as pool:
        sse, grpc_arrivals = pool.map(lambda f: f(), [sse_stream, grpc_stream])

    for arrivals in (sse, grpc_arrivals):
        assert arrivals[-1] > LONG_STREAM_S
        # Unbuffered: chunks arrive all along, the first long before the end.
        assert arrivals[0] < LONG_STREAM_S / 2
        assert sum(1 for t in arrivals if t < LONG_STREAM_S / 2) >= 5
        assert sum(1 for t in arrivals if t >= LONG_STREAM_S / 2) >= 5
    # Closing both streams cancelled both sequences on whichever replicas ran them.
    addresses = [address for _, address in envoy_stack.replicas().values()]
    wait_for(
        lambda: sum(running_sequences(a) for a in addresses) == 0,
        15,
        "the closed streams leave the batch",
    )


def test_grpc_calls_spread_across_both_replicas(envoy_stack, channel):
    replicas = {address for _, address in envoy_stack.replicas().values()}
    assert len(replicas) == 2
    wait_until_both_replicas_healthy(envoy_stack)
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    before = {
        h.address: h.requests_total for h in cluster_hosts(envoy_stack.admin_port)["generation"]
    }

    # Least-request picks at random between idle replicas: call until each has answered five
    # times; a balancer that spreads reaches that in a few dozen calls, one that does not, never.
    unary = Counter()
    for _ in range(200):
        unary[tokenize(stub)] += 1
        if len(unary) == 2 and min(unary.values()) >= 5:
            break
    assert set(unary) == replicas, unary
    assert min(unary.values()) >= 5, unary

    def short_stream(_):
        call = generate(stub, "Name a color.", max_tokens=4)
        responses = list(call)
        assert responses[-1].finish_reason != generation_pb2.FINISH_REASON_UNSPECIFIED
        return dict(call.initial_metadata())[UPSTREAM_HEADER]

    # Concurrent streams go to the replica with fewer active ones, but two random picks can
    # both land on the busier one: a few rounds, until both replicas have run streams.
    streams = Counter()
    for _ in range(5):
        with ThreadPoolExecutor(6) as pool:
            streams.update(pool.map(short_stream, range(6)))
        if set(streams) == replicas:
            break
    assert set(streams) == replicas, streams

    # Envoy's own per-host counters agree.
    after = {
        h.address: h.requests_total for h in cluster_hosts(envoy_stack.admin_port)["generation"]
    }
    assert all(after[a] - before[a] >= 5 for a in replicas), (before, after)


def test_edge_reaches_both_replicas_through_envoy(envoy_stack):
    """The edge calls generation through Envoy's gRPC listener, so OpenAI traffic spreads too."""
    wait_until_both_replicas_healthy(envoy_stack)
    client = openai.OpenAI(
        base_url=f"{envoy_stack.http_base}/v1", api_key=envoy_stack.api_key, max_retries=0
    )

    def requests_per_replica() -> dict[str, int]:
        return {
            h.address: h.requests_total for h in cluster_hosts(envoy_stack.admin_port)["generation"]
        }

    def stream(index):
        chunks = client.chat.completions.create(
            model=DEFAULT_CHAT_MODEL,
            messages=[{"role": "user", "content": f"Say a word about the number {index}."}],
            max_tokens=16,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    # Rounds of concurrent streams until Envoy's per-host counters show both replicas reached
    # (a round can land on one replica by chance; see test_grpc_calls_spread_across_...).
    before = requests_per_replica()
    for _ in range(5):
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(stream, range(6)))
        assert all(answers)
        after = requests_per_replica()
        if all(after[a] > before[a] for a in before):
            break
    assert all(after[a] > before[a] for a in before), (before, after)


def test_health_reflection_and_registry_through_the_grpc_listener(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service, name in [
        ("generation", "llmserve.generation.v1.GenerationService"),
        ("registry", "llmserve.registry.v1.RegistryService"),
    ]:
        response = health.Check(
            health_pb2.HealthCheckRequest(service=name),
            metadata=[("x-llmserve-service", service)],
            timeout=10,
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    # What `grpcurl -H 'x-llmserve-service: generation' HOST:50050 list` asks.
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
        metadata=[("x-llmserve-service", "generation")],
        timeout=10,
    )
    names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert "llmserve.generation.v1.GenerationService" in names

    # The registry's package is routed to the registry without any header.
    models = registry_pb2_grpc.RegistryServiceStub(channel).ListModels(
        registry_pb2.ListModelsRequest(), timeout=10
    )
    assert DEFAULT_CHAT_MODEL in [m.name for m in models.models]

    # The embedding service's package reaches the embedding replica.
    from llmserve.embedding.v1 import embedding_pb2, embedding_pb2_grpc

    embedded = embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
        embedding_pb2.EmbedRequest(
            model=DEFAULT_EMBEDDING_MODEL, inputs=[embedding_pb2.EmbedInput(text="hello")]
        ),
        timeout=30,
    )
    assert len(embedded.embeddings[0].values) == 384


def streams_on_each_replica(stub, max_tokens: int) -> dict[str, grpc.Call]:
    """One running Generate stream per replica, by replica address.

    Starts streams, cancelling any that land beside a kept one, until both replicas run one:
    Envoy sends a new stream to the replica with fewer active requests only when its two random
    picks include that replica, so the number of streams it takes is not fixed."""
    streams = {}
    deadline = time.monotonic() + 60
    while len(streams) < 2 and time.monotonic() < deadline:
        call = generate(stub, LONG_PROMPT, max_tokens)
        next(call)
        upstream = dict(call.initial_metadata())[UPSTREAM_HEADER]
        if upstream in streams:
            call.cancel()
        else:
            streams[upstream] = call
    assert len(streams) == 2, streams
    return streams


@contextmanager
def calls_in_background(stub, with_streams: bool):
    """Tokenize (and, with_streams, short Generate) calls from three threads; yields their
    outcomes as (start time, replica or error), complete once the block ends."""
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def caller():
        while not stop.is_set():
            started = time.monotonic()
            try:
                outcomes.append((started, tokenize(stub)))
                if not with_streams:
                    continue
                call = generate(stub, "Hi", max_tokens=2)
                assert list(call)[-1].finish_reason
                outcomes.append((started, dict(call.initial_metadata())[UPSTREAM_HEADER]))
            except grpc.RpcError as error:
                outcomes.append((started, f"error {error.code().name}: {error.details()}"))

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for thread in callers:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in callers:
            thread.join()


def wait_until_restarted_and_healthy(envoy_stack, name: str, old_pid: int) -> None:
    """The launcher restarts a replica on its port; Envoy's health check brings it back."""
    wait_for(
        lambda: envoy_stack.replicas()[name][0] != old_pid,
        30,
        f"the launcher restarts {name}",
    )
    wait_for(
        lambda: all(envoy_stack.generation_hosts().values()),
        180,
        f"the restarted {name} is healthy in Envoy",
    )


def test_sigterm_drains_a_replica_without_failing_a_call(envoy_stack, channel):
    """A rolling restart: the replica reports NOT_SERVING, finishes its streams, and Envoy
    sends new calls elsewhere (refused ones are retried), so no call fails."""
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    (name, (pid, victim)), (_, (_, survivor)) = sorted(envoy_stack.replicas().items())
    wait_until_both_replicas_healthy(envoy_stack)
    # Short enough to finish within the replica's 10 s shutdown grace.
    streams = streams_on_each_replica(stub, max_tokens=40)

    with calls_in_background(stub, with_streams=True) as outcomes:
        wait_for(
            lambda: set(replicas_seen(outcomes)) >= {victim, survivor},
            30,
            "calls reach both replicas before the SIGTERM",
        )
        os.kill(pid, signal.SIGTERM)
        drained = list(streams[victim])
        wait_for(
            lambda: envoy_stack.generation_hosts()[victim] is False,
            15,
            "Envoy marks the draining replica unhealthy",
        )
        taken_out_at = time.monotonic()
        wait_for(
            lambda: sum(replicas_seen(outcomes, since=taken_out_at).values()) >= 5,
            30,
            "five calls start after the draining replica is taken out",
        )

    assert drained[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert list(streams[survivor])[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    errors = [outcome for _, outcome in outcomes if outcome.startswith("error")]
    assert not errors, errors[:5]
    late = replicas_seen(outcomes, since=taken_out_at)
    assert set(late) == {survivor} and late[survivor] >= 5, late
    wait_until_restarted_and_healthy(envoy_stack, name, pid)


def test_killed_replica_is_taken_out_and_calls_keep_succeeding(envoy_stack, channel):
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    (victim_name, (victim_pid, victim)), (_, (_, survivor)) = sorted(envoy_stack.replicas().items())
    wait_until_both_replicas_healthy(envoy_stack)
    # Long streams on both replicas, so one is cut by the kill and the other must not be.
    streams = streams_on_each_replica(stub, max_tokens=4000)

    # Unary calls only: a stream that has started on the killed replica is cut (below).
    with calls_in_background(stub, with_streams=False) as outcomes:
        wait_for(
            lambda: set(replicas_seen(outcomes)) >= {victim, survivor},
            30,
            "calls reach both replicas before the kill",
        )
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        wait_for(
            lambda: envoy_stack.generation_hosts()[victim] is False,
            15,
            "Envoy marks the killed replica unhealthy",
        )
        # A call that started just as the victim was killed may have been answered by it; one
        # that started a second later cannot have been.
        wait_for(
            lambda: sum(replicas_seen(outcomes, since=killed_at + 1).values()) >= 10,
            30,
            "ten calls start after the kill",
        )

    # Calls in flight on the killed replica were retried on the other: none failed.
    errors = [outcome for _, outcome in outcomes if outcome.startswith("error")]
    assert not errors, errors[:5]
    late = replicas_seen(outcomes, since=killed_at + 1)
    assert set(late) == {survivor} and late[survivor] >= 10, late

    # The stream that was on the killed replica fails at once (its response had started, so
    # Envoy cannot retry it: it resets the stream, which gRPC reports as INTERNAL); the one on
    # the survivor goes on.
    with pytest.raises(grpc.RpcError) as cut:
        for _ in streams[victim]:
            pass
    assert cut.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    assert next(streams[survivor]).token_ids
    streams[survivor].cancel()

    # OpenAI requests keep succeeding too.
    client = openai.OpenAI(
        base_url=f"{envoy_stack.http_base}/v1", api_key=envoy_stack.api_key, max_retries=0
    )
    reply = client.chat.completions.create(
        model=DEFAULT_CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.usage.completion_tokens > 0

    wait_until_restarted_and_healthy(envoy_stack, victim_name, victim_pid)
    back = Counter()
    deadline = time.monotonic() + 30
    while back[victim] == 0 and time.monotonic() < deadline:
        back[tokenize(stub)] += 1
    assert back[victim] > 0, (back, cluster_hosts(envoy_stack.admin_port)["generation"])


def docs_examples() -> dict[str, str]:
    """The Python examples of docs/grpc.md, by the name in their `# example:` line."""
    text = (REPO / "docs" / "grpc.md").read_text()
    blocks = re.findall(r"```python\n(# example: ([\w-]+)\n.*?)```", text, re.S)
    return {name: code for code, name in blocks}


def test_docs_grpc_examples_run_through_envoy(envoy_stack, tmp_path):
    examples = docs_examples()
    assert set(examples) >= {"generation", "generation-async", "registry", "embedding", "health"}
    outputs = {}
    for name in ("generation", "generation-async", "registry", "health"):
        script = tmp_path / f"{name}.py"
        script.write_text(examples[name])
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=REPO,
            env={
                **os.environ,
                "LLMSERVE_GRPC_ADDR": envoy_stack.grpc_addr,
                "PYTHONPATH": str(REPO),
            },
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
        outputs[name] = result.stdout
    assert "Paris" in outputs["generation"] and "FINISH_REASON_STOP" in outputs["generation"]
    assert "prompt is" in outputs["generation-async"]
    assert DEFAULT_CHAT_MODEL in outputs["registry"]
    assert outputs["health"].split() == ["registry", "SERVING", "generation", "SERVING"]
    # No embedding or retrieval replica runs here: those examples must at least compile.
    for name in set(examples) - set(outputs):
        compile(examples[name], f"docs/grpc.md:{name}", "exec")
