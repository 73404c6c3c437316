"""Index files: the names, writers and readers of a snapshot's index/ directory.

The one module that knows that layout (index.faiss, rows.arrow, bm25/, meta.json); not how an index is chosen,
built or searched. Plain faiss.read_index opens index.faiss; rows.arrow (FAISS id -> chunk row, an Arrow IPC
file) is memory-mapped, so chunk texts are read only for the hits.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import faiss
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreError
from ..store import ROW_COLUMNS, Snapshot, read_rows, write_json_atomic
from .bm25 import TOKENIZER, Bm25Index
from .score import set_search_param

__all__ = ["BM25_DIR", "INDEX_FILE", "META_FILE", "ROWS_FILE", "SHARDS_DIR", "copy_rows", "index_file_bytes",
           "load_bm25", "load_index", "read_index_rows", "save_bm25", "save_faiss", "save_meta"]

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.arrow"
LEGACY_ROWS_FILE = "rows.parquet"  # indexes built before rows.arrow
META_FILE = "meta.json"
BM25_DIR = "bm25"
BM25_INFO_FILE = "tokenizer.json"  # inside BM25_DIR: row count and tokenizer version
BM25_SKIPPED_FILE = "skipped.json"  # inside BM25_DIR instead: why there is no lexical index
SHARDS_DIR = ".shards"  # a sharded build's partial indexes, removed once merged (sharded.py)
ROWS_BATCH = 8192


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def save_faiss(index: faiss.Index, index_dir: Path, name: str = INDEX_FILE) -> int:
    """Write the FAISS index atomically, as index_dir/name (a shard's in SHARDS_DIR); its size in bytes."""
    index_dir.mkdir(parents=True, exist_ok=True)
    dest = index_dir / name
    tmp = _tmp(dest)
    faiss.write_index(index, str(tmp))
    tmp.replace(dest)
    return dest.stat().st_size


def copy_rows(vectors_path: Path, index_dir: Path) -> None:
    """Every column but the vector, copied batch by batch into rows.arrow (an Arrow IPC file, atomically)."""
    try:
        source = pq.ParquetFile(vectors_path, pre_buffer=False, buffer_size=1 << 20)
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{vectors_path}: cannot read vectors: {e}") from None
    columns = [c for c in ROW_COLUMNS if c in source.schema_arrow.names]
    dest = index_dir / ROWS_FILE
    tmp = _tmp(dest)
    try:
        schema = pa.schema([source.schema_arrow.field(c) for c in columns], metadata=source.schema_arrow.metadata)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in source.iter_batches(batch_size=ROWS_BATCH, columns=columns):
                writer.write_batch(batch)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def save_bm25(bm25: Bm25Index, index_dir: Path) -> None:
    """The lexical index into index_dir/bm25, with the tokenizer it was built with (replaced atomically)."""
    dest = index_dir / BM25_DIR
    tmp = _tmp(dest)
    try:
        bm25.save(tmp)
        (tmp / BM25_INFO_FILE).write_text(json.dumps({"num_docs": bm25.num_docs, "tokenizer": TOKENIZER}),
                                          encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_meta(report: dict[str, Any], index_dir: Path) -> None:
    write_json_atomic(report, index_dir / META_FILE)


def index_file_bytes(index_dir: Path) -> int:
    """Bytes on disk of the index, its rows and its lexical index."""
    total = 0
    for path in (index_dir / INDEX_FILE, index_dir / ROWS_FILE, index_dir / BM25_DIR):
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def read_index_rows(index_dir: Path) -> pa.Table:
    """The rows table of an index, memory-mapped: pages are read from disk only when a column is used."""
    path = index_dir / ROWS_FILE
    if not path.is_file() and (index_dir / LEGACY_ROWS_FILE).is_file():
        return read_rows(index_dir / LEGACY_ROWS_FILE)
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: missing or unreadable index rows: {e}") from None


def note_bm25_skipped(index_dir: Path, rows: int, max_rows: int) -> None:
    """Record that the lexical index was not built, and why, for load_bm25's message."""
    path = index_dir / BM25_DIR
    path.mkdir(parents=True, exist_ok=True)
    (path / BM25_SKIPPED_FILE).write_text(json.dumps({"rows": rows, "max_rows": max_rows}), encoding="utf-8")


def load_bm25(index_dir: Path) -> Bm25Index:
    """The lexical index saved beside a FAISS index. Raises StoreError when the index predates it."""
    path = index_dir / BM25_DIR
    info_path = path / BM25_INFO_FILE
    if (path / BM25_SKIPPED_FILE).is_file():
        why = json.loads((path / BM25_SKIPPED_FILE).read_text(encoding="utf-8"))
        raise StoreError(f"{index_dir}: no BM25 index for --hybrid: {why['rows']} chunks, over [index] "
                         f"bm25_max_rows ({why['max_rows']}); raise it and run `pipeline index`")
    if not info_path.is_file():
        raise StoreError(f"{index_dir}: no BM25 index for --hybrid; rebuild it with `pipeline index`")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("tokenizer") != TOKENIZER:
        raise StoreError(f"{path}: BM25 index of tokenizer {info.get('tokenizer')!r}, this version uses "
                         f"{TOKENIZER!r}; rebuild it with `pipeline index`")
    return Bm25Index.open(path, int(info["num_docs"]))


def load_index(snap: Snapshot) -> tuple[faiss.Index, pa.Table, dict[str, Any]]:
    """The saved index with its search parameter applied, its rows table and its metadata."""
    path = snap.index_dir / INDEX_FILE
    if not path.is_file():
        if not snap.manifest().get("documents"):
            raise StoreError(f"{snap.path.parent.parent}: the live snapshot is empty (0 documents): nothing to "
                             "search; embed a corpus with documents")
        raise StoreError(f"{path}: no index; run `pipeline index` first")
    try:
        meta = json.loads((snap.index_dir / META_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise StoreError(f"{snap.index_dir / META_FILE}: missing or corrupt index metadata: {e}") from None
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:  # FAISS reports a truncated or foreign file as a RuntimeError
        raise StoreError(f"{path}: unreadable FAISS index ({str(e).splitlines()[0][:200]}); "
                         "run `pipeline index` to rebuild it") from None
    set_search_param(index, meta.get("search_param", {}))
    rows = read_index_rows(snap.index_dir)
    if rows.num_rows != index.ntotal:
        raise StoreError(f"{snap.index_dir}: index holds {index.ntotal} vectors but rows has {rows.num_rows}")
    return index, rows, meta
