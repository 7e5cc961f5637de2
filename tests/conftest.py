"""Shared fixtures: the exported default chat model (one cached export per machine), real
in-process gRPC servers on free ports, and the whole stack started as a user starts it."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from services.common.local import free_port, isolated_stack_env
from services.common.local_postgres import LocalPostgres
from services.common.records import ModelKind, ModelRecord
from services.common.rpc import GrpcServer, start_server
from services.registry.defaults import (
    DEFAULT_CHAT_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    minilm_checkpoint,
    smollm2_gguf,
)
from services.registry.importer import ModelImporter
from services.registry.settings import RegistrySettings

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def pytest_terminal_summary(terminalreporter, config):
    # pytest imports test files by their base name (tests/ is not a package).
    fuzz = sys.modules.get("test_fuzz")
    if fuzz and fuzz.FUZZ_CASES in config.stash:
        cases = config.stash[fuzz.FUZZ_CASES]
        terminalreporter.write_line(f"schemathesis: {cases} cases against the edge")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    # The same cache `make run` uses, so the export happens once per machine.
    return RegistrySettings().cache_dir


@pytest.fixture(scope="session")
def chat_model(cache_dir: Path) -> ModelRecord:
    """The default chat model, exported on first use (about 80 s from an empty cache)."""
    importer = ModelImporter(cache_dir)
    return importer.import_model(
        DEFAULT_CHAT_MODEL, ModelKind.CHAT, smollm2_gguf(), progress=lambda stage, fraction: None
    )


@pytest.fixture(scope="session")
def embedding_model(cache_dir: Path) -> ModelRecord:
    """The default embedding model, exported on first use (about 20 s from an empty cache)."""
    importer = ModelImporter(cache_dir)
    return importer.import_model(
        DEFAULT_EMBEDDING_MODEL,
        ModelKind.EMBEDDING,
        minilm_checkpoint(),
        progress=lambda stage, fraction: None,
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A private PostgreSQL 15 server for the whole session (each test takes a new database)."""
    server = LocalPostgres().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_registry_database(request, tmp_path) -> Callable[[], Path | str]:
    """Makes what RegistryStore opens, once per engine: a new SQLite file, or a new database on
    the session's PostgreSQL."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").create_database
    numbers = itertools.count()
    return lambda: tmp_path / f"registry-{next(numbers)}.db"


@pytest.fixture
def registry_database(new_registry_database) -> Path | str:
    return new_registry_database()


def tiny_checkpoint_of(
    model, out: Path, chat_model: ModelRecord, with_template: bool = True
) -> Path:
    """`model` saved with SmolLM2's tokenizer (and chat template, unless not): a real HF
    checkpoint."""
    import json

    model.save_pretrained(out)
    artifact = Path(chat_model.artifact_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(artifact / name, out / name)
    if with_template:
        shutil.copy(artifact / "chat_template.jinja", out / "chat_template.jinja")
    else:
        config_path = out / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config.pop("chat_template", None)
        config_path.write_text(json.dumps(tokenizer_config))
    return out


def _tiny_llama():
    """A two-layer Llama (the model builder's: GQA graphs) that exports in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, chat_model) -> Path:
    return tiny_checkpoint_of(_tiny_llama(), tmp_path_factory.mktemp("tiny-llama"), chat_model)


@pytest.fixture(scope="session")
def tiny_base_checkpoint(tmp_path_factory, chat_model) -> Path:
    """The same without a chat template: a base model, which serves completions only."""
    return tiny_checkpoint_of(
        _tiny_llama(), tmp_path_factory.mktemp("tiny-base"), chat_model, with_template=False
    )


@pytest.fixture(scope="session")
def tiny_gpt2_checkpoint(tmp_path_factory, chat_model) -> Path:
    """A two-layer GPT-2, an architecture the model builder lacks: optimum exports it."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=49152,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    return tiny_checkpoint_of(
        GPT2LMHeadModel(config), tmp_path_factory.mktemp("tiny-gpt2"), chat_model
    )


def _loaded(chat_model, kv_cache: str, weights: str):
    from services.common.onnx_runtime import select_providers
    from services.generation.model_pool import ModelPool

    async def lookup(name):
        return chat_model

    pool = ModelPool(
        lookup, select_providers("cpu"), 0, 8, 2048, weights=weights, kv_cache=kv_cache
    )
    yield asyncio.run(pool.get(chat_model.name))
    pool.close()


@pytest.fixture(scope="session")
def loaded_chat_model(chat_model):
    """Tokenizer, template and an engine over the real ONNX model, without gRPC."""
    yield from _loaded(chat_model, "float", "fp32")


@pytest.fixture(scope="session")
def loaded_chat_model_int8(chat_model):
    """The same as `make run` serves it by default: int4 weights, an int8 KV cache."""
    yield from _loaded(chat_model, "int8", "int4")


@pytest.fixture(params=["float", "int8"])
def loaded_with_each_cache(request):
    """loaded_chat_model, then loaded_chat_model_int8: for what must hold for either cache."""
    suffix = "_int8" if request.param == "int8" else ""
    return request.getfixturevalue(f"loaded_chat_model{suffix}")


@pytest.fixture(scope="session")
async def registry_server(tmp_path_factory, chat_model, embedding_model):
    from llmserve.registry.v1 import registry_pb2, registry_pb2_grpc
    from services.common.rpc import service_name
    from services.registry.servicer import RegistryServicer
    from services.registry.store import RegistryStore

    store = RegistryStore(tmp_path_factory.mktemp("registry") / "registry.db")
    store.add_model(chat_model)
    store.add_model(embedding_model)
    importer = ModelImporter(RegistrySettings().cache_dir)

    def register(server):
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(store, importer), server
        )
        return [service_name(registry_pb2, "RegistryService")]

    server: GrpcServer = await start_server("127.0.0.1:0", register)
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)
    store.close()


@pytest.fixture(scope="session")
async def generation_server(registry_server):
    """A generation server; yields (address, pool) so tests can watch the engine."""
    from llmserve.generation.v1 import generation_pb2, generation_pb2_grpc
    from services.common.onnx_runtime import select_providers
    from services.common.registry_client import RegistryClient
    from services.common.rpc import service_name
    from services.generation.model_pool import ModelPool
    from services.generation.servicer import GenerationServicer

    registry = RegistryClient(registry_server)
    pool = ModelPool(registry.get_model, select_providers("cpu"), 0, 8, 2048)

    def register(server):
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(pool), server
        )
        return [service_name(generation_pb2, "GenerationService")]

    server = await start_server("127.0.0.1:0", register)
    yield f"127.0.0.1:{server.port}", pool
    await server.stop(0)
    pool.close()
    await registry.close()


@pytest.fixture(scope="session")
async def embedding_server(registry_server):
    """An embedding server; yields (address, embedder)."""
    from llmserve.embedding.v1 import embedding_pb2, embedding_pb2_grpc
    from services.common.onnx_runtime import select_providers
    from services.common.registry_client import RegistryClient
    from services.common.rpc import service_name
    from services.embedding.embedder import Embedder
    from services.embedding.servicer import EmbeddingServicer

    registry = RegistryClient(registry_server)
    embedder = Embedder(registry.get_model, select_providers("cpu"))

    def register(server):
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(
            EmbeddingServicer(embedder), server
        )
        return [service_name(embedding_pb2, "EmbeddingService")]

    server = await start_server("127.0.0.1:0", register)
    yield f"127.0.0.1:{server.port}", embedder
    await server.stop(0)
    embedder.close()
    await registry.close()


@pytest.fixture(scope="session")
async def retrieval_server(tmp_path_factory, embedding_server):
    """A retrieval server on the embedded store in a fresh directory; yields (address, core)."""
    from llmserve.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
    from services.common.embedding_client import EmbeddingClient
    from services.common.rpc import service_name
    from services.retrieval.core import RetrievalCore
    from services.retrieval.embedded_store import EmbeddedStore
    from services.retrieval.files import FileStore
    from services.retrieval.servicer import RetrievalServicer

    data = tmp_path_factory.mktemp("retrieval")
    store = EmbeddedStore(data / "vectors.db")
    files = FileStore(data)
    embedding = EmbeddingClient(embedding_server[0])
    core = RetrievalCore(store, files, embedding)

    def register(server):
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(core), server)
        return [service_name(retrieval_pb2, "RetrievalService")]

    server = await start_server("127.0.0.1:0", register)
    yield f"127.0.0.1:{server.port}", core
    await server.stop(0)
    await embedding.close()
    files.close()
    store.close()


@contextmanager
def launched_stack(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """`llmserve run` (the launcher `make run` starts) with `env`, logging to `log_path`;
    yields it once it reports ready, and stops it with SIGINT (what Ctrl-C sends) afterwards."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while "ready: OpenAI API" not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"stack did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.5)
    yield process
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("launcher did not stop within 60 s of SIGINT")


class RunningStack:
    def __init__(self, process: subprocess.Popen, base_url: str, log_path: Path, env: dict):
        self.process = process
        self.env = env
        self.api_key = Path(env["REGISTRY_DEV_KEY_PATH"]).read_text().strip()
        self.admin_token = env["EDGE_ADMIN_TOKEN"]
        # requests with the development key, for routes the openai SDK does not cover.
        self.http = requests.Session()
        self.http.headers.update(self.headers)
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@pytest.fixture(scope="session")
def stack(tmp_path_factory, chat_model, embedding_model) -> RunningStack:
    """The stack as `make run` starts it, on free ports and a fresh database."""
    data = tmp_path_factory.mktemp("stack")
    env = {
        **isolated_stack_env(data, "test-admin-token"),
        # Read directly by tests/test_stack.py; the launcher gives the edge its URL.
        "GENERATION_METRICS_PORT": str(free_port()),
        # Revocation tests wait this long for the edge's key cache.
        "EDGE_KEY_CACHE_TTL_S": "1",
        "EDGE_CATALOG_TTL_S": "1",
    }
    log_path = data / "stack.log"
    with launched_stack(env, log_path) as process:
        running = RunningStack(process, f"http://127.0.0.1:{env['EDGE_PORT']}", log_path, env)
        requests.get(f"{running.base_url}/health", timeout=5).raise_for_status()
        yield running


@pytest.fixture(scope="session")
def admin(stack):
    """The admin API of the stack (servings, keys, usage)."""
    from tests.gateway import Admin

    return Admin(stack)
