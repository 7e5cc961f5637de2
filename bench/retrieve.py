"""Retrieve latency of the embedded vector store at 10k and 100k chunks.

    .venv/bin/python -m bench.retrieve [--sizes 10000 100000] [--queries 200]

Fills a fresh store with random unit vectors (384 dimensions, as all-MiniLM-L6-v2) and
random words, reopens it in this process (timing the load), then times top-5 vector and
hybrid searches, checking the vector results against numpy's exact top-5 (recall). With
`sqlite-vec` and `pysqlite3-binary` installed it also times sqlite-vec's exact search on the
same vectors, the closest transactional alternative (see docs/vector-store.md).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from services.retrieval.domain import Chunk, ChunkSettings, CollectionSpec, DocumentInfo, SearchMode
from services.retrieval.embedded_store import EmbeddedStore

DIMENSIONS = 384
TOP_K = 5
DOCUMENT_CHUNKS = 1000
WORDS = "harbour bridge tram market council river stone lamp bread eel quarry arch".split()


def unit_rows(count: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.standard_normal((count, DIMENSIONS)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def fill(store: EmbeddedStore, vectors: np.ndarray, rng: np.random.Generator) -> float:
    store.create_collection(CollectionSpec("bench", "random", DIMENSIONS, ChunkSettings(128, 24)))
    started = time.perf_counter()
    for doc, start in enumerate(range(0, len(vectors), DOCUMENT_CHUNKS)):
        chunks = [
            Chunk(i - start, " ".join(rng.choice(WORDS, 12)) + f" w{i}", vectors[i])
            for i in range(start, min(start + DOCUMENT_CHUNKS, len(vectors)))
        ]
        store.add_document(
            "bench", DocumentInfo(f"d{doc}", f"d{doc}.txt", "text/plain", 0, 0), chunks
        )
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return f"p50 {np.percentile(ms, 50):6.1f} ms  p95 {np.percentile(ms, 95):6.1f} ms"


def bench_store(size: int, queries: int, directory: Path) -> None:
    rng = np.random.default_rng(size)
    vectors = unit_rows(size, rng)
    path = directory / f"store-{size}.db"
    store = EmbeddedStore(path)
    insert_s = fill(store, vectors, rng)
    store.close()
    started = time.perf_counter()
    store = EmbeddedStore(path)
    open_s = time.perf_counter() - started
    probes = unit_rows(queries, rng)
    vector_times, hybrid_times, hits = [], [], 0
    for probe in probes:
        started = time.perf_counter()
        found = store.search("bench", probe, "", TOP_K, SearchMode.VECTOR, 0.5)
        vector_times.append(time.perf_counter() - started)
        exact = {f"w{i}" for i in np.argsort(-(vectors @ probe))[:TOP_K]}
        hits += len(exact & {p.text.rsplit(" ", 1)[1] for p in found})
        started = time.perf_counter()
        store.search("bench", probe, "harbour bridge", TOP_K, SearchMode.HYBRID, 0.5)
        hybrid_times.append(time.perf_counter() - started)
    store.close()
    print(
        f"embedded {size:>7} chunks: insert {insert_s:5.1f} s, reopen {open_s:4.2f} s, "
        f"file {path.stat().st_size / 2**20:5.0f} MiB"
    )
    print(
        f"  vector top-{TOP_K}: {percentiles(vector_times)}  recall {hits / (queries * TOP_K):.3f}"
    )
    print(f"  hybrid top-{TOP_K}: {percentiles(hybrid_times)}")
    bench_sqlite_vec(vectors, probes, directory / f"vec-{size}.db")


def bench_sqlite_vec(vectors: np.ndarray, probes: np.ndarray, path: Path) -> None:
    try:
        import sqlite_vec
        from pysqlite3 import dbapi2 as sqlite3
    except ImportError:
        return
    db = sqlite3.connect(path, isolation_level=None)
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.execute(
        f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIMENSIONS}] distance_metric=cosine)"
    )
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO v (rowid, embedding) VALUES (?, ?)",
        ((i, row.tobytes()) for i, row in enumerate(vectors)),
    )
    db.execute("COMMIT")
    times = []
    for probe in probes:
        started = time.perf_counter()
        db.execute(
            "SELECT rowid, distance FROM v WHERE embedding MATCH ? AND k = ?",
            (probe.tobytes(), TOP_K),
        ).fetchall()
        times.append(time.perf_counter() - started)
    db.close()
    print(f"  sqlite-vec {TOP_K}: {percentiles(times)}  (exact, for comparison)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        for size in args.sizes:
            bench_store(size, args.queries, Path(directory))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process {peak:.0f} MiB")


if __name__ == "__main__":
    main()
