"""Store: the Parquet files of chunk vectors: snapshots, the CURRENT pointer, the live content hashes.

Knows files, schemas and atomic writes, never providers or FAISS. An output directory holds immutable
snapshots; CURRENT names the one that serves searches and is switched with an atomic rename. The vector
cache (raw vectors by model key and content hash) lives in cache.py and is re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .cache import VectorCache, normalize_rows
from .errors import StoreError
from .records import Chunk

__all__ = [
    "META_KEY",
    "Snapshot",
    "TableWriter",
    "VectorCache",
    "cache_key",
    "chunk_table",
    "current_snapshot",
    "empty_table",
    "fingerprint_id",
    "iter_vector_batches",
    "live_content_hashes",
    "live_snapshot",
    "new_snapshot_dir",
    "normalize_rows",
    "publish_snapshot",
    "read_rows",
    "row_group_sizes",
    "snapshot_fingerprint",
    "write_json_atomic",
    "write_table_atomic",
]

META_KEY = b"pipeline"
CURRENT = "CURRENT"
SNAPSHOTS = "snapshots"
VECTORS_FILE = "vectors.parquet"
MANIFEST_FILE = "manifest.json"

ROW_COLUMNS = ("chunk_id", "doc_id", "source_path", "doc_type", "chunk_index", "char_start", "char_end",
               "token_count", "overlap_chars", "content_hash", "text", "metadata")


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """A short stable id of a fingerprint dict (canonical JSON, sha256)."""
    canonical = json.dumps(fingerprint, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cache_key(fingerprint: dict[str, Any]) -> str:
    """The vector cache's key for a run fingerprint: vectors depend on model, endpoint and passage
    instruction, not on chunking or normalisation."""
    return f"{fingerprint['model']}-" + fingerprint_id({k: fingerprint[k] for k in (
        "model", "provider", "endpoint", "dimension", "passage_instruction")})


def snapshot_fingerprint(out_dir: Path) -> dict[str, Any] | None:
    """The fingerprint the live snapshot of out_dir was built with (None: nothing published yet).

    Read from the vectors file's footer, not the manifest, which grows with the corpus (0.5 GB at 530k
    documents); the manifest only when the footer has none.
    """
    snap = current_snapshot(out_dir) if out_dir.exists() else None
    if snap is None:
        return None
    try:
        raw = pq.read_schema(snap.vectors_path).metadata or {}
        fingerprint = json.loads(raw[META_KEY]).get("fingerprint") if META_KEY in raw else None
    except (FileNotFoundError, pa.ArrowInvalid, OSError, json.JSONDecodeError):
        fingerprint = None
    if not isinstance(fingerprint, dict):
        fingerprint = snap.manifest().get("fingerprint")
    return fingerprint if isinstance(fingerprint, dict) else None


def live_content_hashes(out_dir: Path, batch_rows: int = 1 << 16) -> tuple[str, int, set[str]]:
    """Cache key, dimension and content hashes of out_dir's live snapshot (read in batches, no vectors).

    Raises StoreError when out_dir has no live snapshot or its manifest has no fingerprint.
    """
    snap = live_snapshot(out_dir)
    manifest = snap.manifest()
    fingerprint = manifest.get("fingerprint")
    if not isinstance(fingerprint, dict):
        raise StoreError(f"{snap.manifest_path}: no model fingerprint; cannot tell which cache it uses")
    try:
        source = pq.ParquetFile(snap.vectors_path, pre_buffer=False, buffer_size=1 << 20)
        hashes: set[str] = set()
        for batch in source.iter_batches(batch_size=batch_rows, columns=["content_hash"]):
            hashes.update(batch.column(0).to_pylist())
    except (FileNotFoundError, pa.ArrowInvalid, OSError, KeyError) as e:
        raise StoreError(f"{snap.vectors_path}: cannot read content hashes: {e}") from None
    return cache_key(fingerprint), int(fingerprint["dimension"]), hashes


def _vector_array(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    flat = pa.array(matrix.reshape(-1), type=pa.float32())  # zero-copy view of the numpy buffer
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def chunk_table(chunks: Sequence[Chunk], matrix: np.ndarray | None, meta: dict[str, Any]) -> pa.Table:
    """One row per chunk, vector as fixed_size_list<float32>[dim]; `meta` goes into the file metadata."""
    columns: dict[str, pa.Array] = {
        "chunk_id": pa.array([c.chunk_id for c in chunks], pa.string()),
        "doc_id": pa.array([c.doc_id for c in chunks], pa.string()),
        "source_path": pa.array([c.source_path for c in chunks], pa.string()),
        "doc_type": pa.array([c.doc_type for c in chunks], pa.string()),
        "chunk_index": pa.array([c.chunk_index for c in chunks], pa.int32()),
        "char_start": pa.array([c.char_start for c in chunks], pa.int64()),
        "char_end": pa.array([c.char_end for c in chunks], pa.int64()),
        "token_count": pa.array([c.token_count for c in chunks], pa.int32()),
        "overlap_chars": pa.array([c.overlap_chars for c in chunks], pa.int32()),
        "content_hash": pa.array([c.content_hash for c in chunks], pa.string()),
        "text": pa.array([c.text for c in chunks], pa.string()),
        "metadata": pa.array([json.dumps(c.metadata, ensure_ascii=False) if c.metadata else "{}"
                              for c in chunks], pa.string()),
    }
    if matrix is not None:
        if matrix.shape[0] != len(chunks):
            raise StoreError(f"{matrix.shape[0]} vectors for {len(chunks)} chunks")
        columns["vector"] = _vector_array(matrix)
    table = pa.table(columns)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, ensure_ascii=False).encode()})


def empty_table(dimension: int, meta: dict[str, Any]) -> pa.Table:
    """No rows, but the schema (and metadata) of a snapshot's vectors.parquet."""
    return chunk_table([], np.zeros((0, dimension), np.float32), meta)


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    # Dictionaries and min/max statistics of float vectors cost 4x the write time and 50% more bytes
    # for nothing, and zstd saves them 7 % for a third more time: keep all three for the row columns.
    plain = [f.name for f in schema if not pa.types.is_fixed_size_list(f.type)]
    codecs = {name: "zstd" for name in plain} | {f"{f.name}.list.element": "none" for f in schema
                                                   if pa.types.is_fixed_size_list(f.type)}
    return {"compression": codecs, "use_dictionary": plain, "write_statistics": plain}


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write Parquet to a temporary name, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        pq.write_table(table, tmp, **_parquet_options(table.schema))
        _fsync_replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class TableWriter:
    """write_table_atomic one row group at a time: rows go to a temporary file, commit() renames it.

    Lets a run write its snapshot while the last batches are still being embedded. Each row group is
    flushed to disk as it is written (in the writer's thread), so commit() waits for the last one only.
    Not thread-safe: one writer thread at a time.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.rows = path, 0
        self._tmp = _tmp_name(path)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._tmp, schema, **_parquet_options(schema))

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            raise StoreError(f"{self.path}: writer already closed")
        self._writer.write_table(table)
        self.rows += table.num_rows
        with open(self._tmp, "rb") as f:
            os.fdatasync(f.fileno())

    def commit(self) -> None:
        if self._writer is None:
            raise StoreError(f"{self.path}: writer already closed")
        self._writer.close()
        self._writer = None
        _fsync_replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop what was written (idempotent; nothing is left under the final name)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)


def write_json_atomic(data: Any, path: Path) -> None:
    """Indented UTF-8 JSON, written like write_table_atomic (orjson: a 20k-document manifest in 20 ms)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    _fsync_replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Snapshot:
    """One immutable build: vectors.parquet, manifest.json and index/ inside `path`."""

    path: Path

    @property
    def vectors_path(self) -> Path:
        return self.path / VECTORS_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def index_dir(self) -> Path:
        return self.path / "index"

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{self.manifest_path}: manifest missing") from None
        except json.JSONDecodeError as e:
            raise StoreError(f"{self.manifest_path}: corrupt manifest: {e}") from None


def new_snapshot_dir(out_dir: Path) -> Snapshot:
    now = time.time_ns()  # names sort in creation order, which pruning relies on
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000))
    path = out_dir / SNAPSHOTS / f"{stamp}.{now % 1_000_000_000:09d}"
    path.mkdir(parents=True)
    return Snapshot(path)


def current_snapshot(out_dir: Path) -> Snapshot | None:
    """The snapshot CURRENT points to, or None when nothing was published yet."""
    pointer = out_dir / CURRENT
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    snap = Snapshot(out_dir / SNAPSHOTS / name)
    if not snap.path.is_dir():
        raise StoreError(f"{pointer}: points to missing snapshot {name!r}")
    return snap


def live_snapshot(out_dir: Path) -> Snapshot:
    """The snapshot CURRENT points to. Raises StoreError when nothing was embedded yet."""
    snap = current_snapshot(out_dir)
    if snap is None:
        raise StoreError(f"{out_dir}: nothing embedded yet; run `pipeline embed` first")
    return snap


def publish_snapshot(out_dir: Path, snap: Snapshot, previous: Snapshot | None = None) -> None:
    """Make `snap` the live one (atomic rename of CURRENT), then drop every snapshot but it and `previous`.

    Unpublished leftovers of crashed runs go too; `previous` stays as the one-step rollback.
    """
    pointer = out_dir / CURRENT
    tmp = out_dir / f".{CURRENT}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(snap.path.name + "\n", encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    _fsync_tree(snap.path)  # every file of the snapshot (the index's too) is on disk before CURRENT names it
    os.replace(tmp, pointer)
    _fsync_dir(out_dir)
    keep = {snap.path.name} | ({previous.path.name} if previous is not None else set())
    for path in (out_dir / SNAPSHOTS).iterdir():
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for stale in out_dir.glob(f".{CURRENT}.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(folder))


def remove_stray_files(out_dir: Path) -> None:
    """Drop what crashed runs left: temporary files, and snapshots newer than CURRENT (never published).

    Only for the holder of out_dir's lock: an unpublished snapshot newer than CURRENT is then nobody's.
    """
    live = current_snapshot(out_dir) if (out_dir / CURRENT).exists() else None
    snapshots = out_dir / SNAPSHOTS
    if snapshots.is_dir():
        for path in snapshots.iterdir():
            if path.is_dir() and (live is None or path.name > live.path.name):
                shutil.rmtree(path, ignore_errors=True)
    for stale in out_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _read_parquet(path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: unreadable Parquet: {e}") from None


def read_table(path: Path) -> pa.Table:
    """A whole Parquet table; StoreError naming the file when it is missing or unreadable."""
    return _read_parquet(path)


def _footer(path: Path) -> pq.FileMetaData:
    try:
        return pq.ParquetFile(path).metadata
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: unreadable Parquet: {e}") from None


def row_count(path: Path) -> int:
    """The rows of a Parquet file, from its footer; StoreError naming the file when unreadable."""
    return int(_footer(path).num_rows)


def row_group_sizes(path: Path) -> list[int]:
    """Rows in each row group of a Parquet file, from its footer: where a reader of a row range starts."""
    meta = _footer(path)
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def read_rows(path: Path) -> pa.Table:
    """Every column but the vector."""
    return _read_parquet(path, ROW_COLUMNS)


def _matrix(column: pa.Array, path: Path) -> np.ndarray:
    """A fixed_size_list<float32>[dim] column as a float32 (rows, dim) matrix (zero-copy when it can)."""
    if not isinstance(column.type, pa.FixedSizeListType):
        raise StoreError(f"{path}: column 'vector' is not fixed_size_list<float32>")
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def iter_vector_batches(path: Path, batch_rows: int, start: int = 0,
                        stop: int | None = None) -> Iterator[np.ndarray]:
    """The vector column as float32 (rows, dim) blocks of at most batch_rows, in file order.

    With `start`/`stop`, rows [start, stop) only: the row groups before and after them are not read (a shard
    of a sharded index build reads its range this way).
    """
    try:
        # pre_buffer off and a small read buffer: pages are decompressed as batches are asked for, so a
        # snapshot written as one huge row group still streams (pre-buffering would load its whole column).
        source = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: cannot read vectors: {e}") from None
    end = source.metadata.num_rows if stop is None else min(stop, source.metadata.num_rows)
    if start >= end:
        return
    starts = np.cumsum([0] + [source.metadata.row_group(g).num_rows for g in range(source.num_row_groups)])
    first = int(np.searchsorted(starts, start, side="right")) - 1
    last = int(np.searchsorted(starts, end, side="left")) - 1
    offset = int(starts[first])
    groups = list(range(first, last + 1))
    for batch in source.iter_batches(batch_size=batch_rows, row_groups=groups, columns=["vector"]):
        lo, hi = max(start - offset, 0), min(end - offset, batch.num_rows)
        if hi > lo:
            yield _matrix(batch.column(0).slice(lo, hi - lo), path)
        offset += batch.num_rows
        if offset >= end:
            break
