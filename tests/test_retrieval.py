"""Retrieval: chunking and parsing, the embedded store, then the service over real gRPC with
the real embedding model, and durability across a kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc
import pytest
from tokenizers import Tokenizer

from llmserve.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.common.domain import TokenSpans
from services.common.errors import InvalidArgument
from services.common.local import free_port
from services.retrieval.chunking import chunk_text
from services.retrieval.extract import extract_text, media_type_of
from tests.conftest import REPO
from tests.documents import CITY_FILES, HISTORY_MD, TRANSPORT_LINES, make_pdf


@pytest.fixture(scope="module")
def tokenizer(embedding_model) -> Tokenizer:
    tokenizer = Tokenizer.from_file(f"{embedding_model.artifact_dir}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def spans_of(tokenizer: Tokenizer, text: str) -> TokenSpans:
    encoding = tokenizer.encode(text, add_special_tokens=False)
    return TokenSpans(
        encoding.ids, [s for s, _ in encoding.offsets], [e for _, e in encoding.offsets]
    )


# Chunking and parsing


def test_chunks_fit_overlap_and_cover_the_text(tokenizer):
    text = " ".join(f"Sentence {i} tells about the harbour of Velmora." for i in range(60))
    chunks = chunk_text(text, spans_of(tokenizer, text), chunk_tokens=40, overlap_tokens=10)
    assert len(chunks) > 5
    for chunk in chunks:
        # Re-tokenizing a chunk gives at most its budget: it fits the model.
        assert len(tokenizer.encode(chunk, add_special_tokens=False).ids) <= 40
        assert chunk.endswith(".")  # a sentence end was in reach every time
    for first, second in zip(chunks, chunks[1:], strict=False):
        assert second.split()[0] in first  # overlap carries words over
    assert chunks[0].startswith("Sentence 0") and chunks[-1].endswith(
        "Sentence 59 tells about the harbour of Velmora."
    )


def test_chunks_prefer_paragraph_breaks_and_handle_text_without_spaces(tokenizer):
    first = "The first paragraph tells of the harbour, its fishing boats and their crews at dawn"
    text = f"{first}\n\nSecond paragraph " + "runs on and on, " * 10
    chunks = chunk_text(text, spans_of(tokenizer, text), chunk_tokens=30, overlap_tokens=0)
    # A paragraph break beats the sentence-less run-on that would fill the window.
    assert chunks[0] == first
    cjk = "北京是中国的首都" * 20
    pieces = chunk_text(cjk, spans_of(tokenizer, cjk), chunk_tokens=25, overlap_tokens=5)
    assert all(len(tokenizer.encode(p, add_special_tokens=False).ids) <= 25 for p in pieces)
    assert "".join(p[5:] if i else p for i, p in enumerate(pieces)) == cjk
    assert chunk_text("", TokenSpans([], [], []), 10, 2) == []


def test_extracts_text_markdown_and_pdf():
    assert media_type_of("notes.MD") == "text/markdown"
    assert media_type_of("upload.bin", "application/pdf; charset=binary") == "application/pdf"
    with pytest.raises(InvalidArgument):
        media_type_of("image.png")
    text = extract_text(make_pdf(TRANSPORT_LINES), "application/pdf", "t.pdf")
    assert "blue line runs from the central station" in text
    assert extract_text(b"# Title\n\nbody", "text/markdown", "a.md") == "# Title\n\nbody"
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        extract_text(b"\xff\xfe\xfa", "text/plain", "a.txt")
    with pytest.raises(InvalidArgument, match="not a readable PDF"):
        extract_text(b"%PDF-1.4 garbage", "application/pdf", "bad.pdf")
    with pytest.raises(InvalidArgument, match="holds no text"):
        extract_text(b"  \n ", "text/plain", "blank.txt")


# The service over real gRPC


@pytest.fixture
async def retrieval(retrieval_server):
    address, _ = retrieval_server
    async with grpc.aio.insecure_channel(address) as channel:
        yield retrieval_pb2_grpc.RetrievalServiceStub(channel)


async def _ingest_city(stub, collection: str, chunk_tokens: int = 64) -> list:
    return [
        await stub.Ingest(
            retrieval_pb2.IngestRequest(
                collection=collection,
                filename=name,
                content=content,
                chunking=retrieval_pb2.ChunkSettings(chunk_tokens=chunk_tokens, overlap_tokens=8),
            )
        )
        for name, content in CITY_FILES.items()
    ]


async def test_ingest_then_retrieve_finds_the_relevant_chunk_first(retrieval):
    responses = await _ingest_city(retrieval, "velmora_grpc")
    assert all(r.created for r in responses)
    assert [r.document.media_type for r in responses] == [
        "text/markdown",
        "text/plain",
        "application/pdf",
    ]
    assert responses[0].document.chunk_count >= 2
    # Idempotent by content: the same bytes add nothing, even under another name.
    again = await retrieval.Ingest(
        retrieval_pb2.IngestRequest(
            collection="velmora_grpc", filename="copy.md", content=CITY_FILES["history.md"]
        )
    )
    assert not again.created and again.document.id == responses[0].document.id

    for question, expected in [
        ("Who designed the Amberline Bridge?", "Tessa Quorin"),
        ("What is the signature dish of Velmora?", "smoked eel"),
        ("How long does the tram to the airport take?", "25 minutes"),
    ]:
        found = await retrieval.Retrieve(
            retrieval_pb2.RetrieveRequest(collection="velmora_grpc", query=question, limit=3)
        )
        assert expected in found.points[0].source, (question, found.points)
        scores = [p.score for p in found.points]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 3

    one = await retrieval.Retrieve(
        retrieval_pb2.RetrieveRequest(collection="velmora_grpc", query="bridge", limit=1)
    )
    assert len(one.points) == 1 and one.limit == 1
    strict = await retrieval.Retrieve(
        retrieval_pb2.RetrieveRequest(
            collection="velmora_grpc",
            query="Who designed the Amberline Bridge?",
            score_threshold=0.99,
        )
    )
    assert list(strict.points) == [] and strict.score_threshold == pytest.approx(0.99)
    hybrid = await retrieval.Retrieve(
        retrieval_pb2.RetrieveRequest(
            collection="velmora_grpc",
            query="morrowloaf",
            mode=retrieval_pb2.SEARCH_MODE_HYBRID,
            alpha=0.3,
        )
    )
    assert "morrowloaf" in hybrid.points[0].source

    listed = await retrieval.ListCollections(retrieval_pb2.ListCollectionsRequest())
    (collection,) = [c for c in listed.collections if c.name == "velmora_grpc"]
    assert (collection.document_count, collection.dimensions, collection.chunking.chunk_tokens) == (
        3,
        384,
        64,
    )


async def test_files_upload_then_ingest_by_id(retrieval):
    uploaded = await retrieval.UploadFile(
        retrieval_pb2.UploadFileRequest(
            filename="food.txt", content=CITY_FILES["food.txt"], purpose="assistants"
        )
    )
    assert uploaded.file.id.startswith("file-") and uploaded.file.bytes == len(
        CITY_FILES["food.txt"]
    )
    listed = await retrieval.ListFiles(retrieval_pb2.ListFilesRequest())
    assert uploaded.file.id in [f.id for f in listed.files]
    ingested = await retrieval.Ingest(
        retrieval_pb2.IngestRequest(collection="from_files", file_id=uploaded.file.id)
    )
    assert ingested.created and ingested.document.filename == "food.txt"
    await retrieval.DeleteFile(retrieval_pb2.DeleteFileRequest(id=uploaded.file.id))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await retrieval.DeleteFile(retrieval_pb2.DeleteFileRequest(id=uploaded.file.id))
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "call,request_pb,code",
    [
        (
            "Retrieve",
            retrieval_pb2.RetrieveRequest(collection="nope", query="x"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "Retrieve",
            retrieval_pb2.RetrieveRequest(collection="bad name!", query="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Ingest",
            retrieval_pb2.IngestRequest(collection="c1", filename="a.txt"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Ingest",
            retrieval_pb2.IngestRequest(collection="c1", filename="a.png", content=b"x"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "Ingest",
            retrieval_pb2.IngestRequest(collection="c1", file_id="file-missing"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "CreateCollection",
            retrieval_pb2.CreateCollectionRequest(
                name="c2", chunking=retrieval_pb2.ChunkSettings(chunk_tokens=1000)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "CreateCollection",
            retrieval_pb2.CreateCollectionRequest(
                name="c3", chunking=retrieval_pb2.ChunkSettings(chunk_tokens=10, overlap_tokens=10)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "DeleteCollection",
            retrieval_pb2.DeleteCollectionRequest(name="nope"),
            grpc.StatusCode.NOT_FOUND,
        ),
    ],
)
async def test_bad_requests_get_status_codes(retrieval, call, request_pb, code):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(retrieval, call)(request_pb)
    assert caught.value.code() is code


# Durability: what was acknowledged survives a kill -9 of the service


async def _wait_serving(address: str, process: subprocess.Popen) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for _ in range(240):
        assert process.poll() is None, "retrieval service exited while starting"
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if health.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(0.25)
    raise AssertionError("retrieval service did not become healthy")


def _start_retrieval(port: int, data_dir, embedding_address: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "RETRIEVAL_PORT": str(port),
        "RETRIEVAL_DATA_DIR": str(data_dir),
        "RETRIEVAL_EMBEDDING_ADDR": embedding_address,
    }
    return subprocess.Popen([sys.executable, "-m", "services.retrieval"], cwd=REPO, env=env)


async def test_acknowledged_chunks_survive_kill_9(tmp_path, embedding_server):
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = _start_retrieval(port, tmp_path, embedding_server[0])
    acknowledged: list[tuple[str, bytes]] = []
    try:
        await _wait_serving(address, process)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)

            async def writer(worker: int) -> None:
                for n in range(1000):
                    report = (
                        f"Report {worker}-{n}: the lighthouse keeper logged code Z{worker}x{n}."
                    )
                    content = report.encode()
                    await stub.Ingest(
                        retrieval_pb2.IngestRequest(
                            collection="durable", filename=f"r{worker}-{n}.txt", content=content
                        )
                    )
                    acknowledged.append((f"r{worker}-{n}.txt", content))
                    if len(acknowledged) >= 12:
                        enough.set()

            enough = asyncio.Event()
            writers = [asyncio.create_task(writer(w)) for w in range(3)]
            await asyncio.wait_for(enough.wait(), 120)
            # Killed with writes in flight: those may be lost, acknowledged ones may not.
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            results = await asyncio.gather(*writers, return_exceptions=True)
            assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
        survivors = list(acknowledged)

        process = _start_retrieval(port, tmp_path, embedding_server[0])
        await _wait_serving(address, process)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            listed = await stub.ListCollections(retrieval_pb2.ListCollectionsRequest())
            (durable,) = listed.collections
            assert durable.document_count >= len(survivors)
            for filename, content in survivors:
                again = await stub.Ingest(
                    retrieval_pb2.IngestRequest(
                        collection="durable", filename=filename, content=content
                    )
                )
                assert not again.created, f"{filename} was acknowledged but lost"
            found = await stub.Retrieve(
                retrieval_pb2.RetrieveRequest(
                    collection="durable", query=survivors[0][1].decode(), limit=1
                )
            )
            assert found.points[0].source == survivors[0][1].decode()
    finally:
        process.kill()
        process.wait(10)


def test_a_markdown_heading_stays_with_its_section(tokenizer):
    chunks = chunk_text(HISTORY_MD, spans_of(tokenizer, HISTORY_MD), 64, 8)
    (bridge,) = [c for c in chunks if "Tessa Quorin" in c]
    assert bridge.startswith("## The Amberline Bridge")
    assert not any(c.endswith("Bridge") for c in chunks)
