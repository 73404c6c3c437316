"""Snapshot stream: a new snapshot's vectors.parquet written while the run embeds, in bounded memory.

Whole documents go out in corpus order once all their vectors are in the cache, then the previous
snapshot's kept rows are copied batch by batch; knows nothing of providers, chunking or the index.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import StoreError
from .records import Chunk
from .store import Snapshot, TableWriter, VectorCache, chunk_table, empty_table, normalize_rows

__all__ = ["SnapshotStream"]


@dataclass(eq=False)
class _Pending:
    doc_id: str
    entry: dict[str, Any]  # the document's manifest entry (content hash, source path, ...)
    chunks: list[Chunk]
    outstanding: set[str] = field(default_factory=set)  # content hashes whose vectors are not in the cache yet
    failed: bool = False

    @property
    def settled(self) -> bool:
        return self.failed or not self.outstanding


class SnapshotStream:
    """The writer of one snapshot's vectors.parquet during a run; thread-safe.

    Holds only documents not yet written: those whose vectors are still being embedded (bounded by the
    embedder's queue) and up to a row group of settled ones. A document with a failed chunk is left
    out whole (its previous version, if any, is kept by copy_rows). Memory: O(row group + in flight).
    """

    ROW_GROUP_BYTES = 8 << 20  # of vectors: the rows still unwritten when the last batch lands, at most
    COPY_BATCH_ROWS = 8192

    def __init__(self, snap: Snapshot, cache: VectorCache, meta: dict[str, Any]) -> None:
        self.cache, self.meta = cache, meta
        self.rows_per_group = max(1, self.ROW_GROUP_BYTES // (4 * cache.dimension))
        self.schema = empty_table(cache.dimension, meta).schema
        self.writer = TableWriter(snap.vectors_path, self.schema)
        self.written: dict[str, dict[str, Any]] = {}  # doc_id -> manifest entry, with its chunk count
        self.failed_docs: dict[str, dict[str, Any]] = {}  # doc_id -> the manifest entry it would have had
        self.failed_chunks = 0
        self._pending: deque[_Pending] = deque()  # corpus order, from the first unsettled document on
        self._settled: deque[_Pending] = deque()  # the settled prefix, waiting to fill a row group
        self._settled_rows = 0
        self._waiting: dict[str, list[_Pending]] = {}  # content hash -> documents waiting for its vector
        self._vectors: dict[str, list[Any]] = {}  # content hash -> [its row, documents yet to be written with it]
        self._state = threading.Lock()  # the queues above
        self._writing = threading.Lock()  # one row group at a time, in order

    def add(self, doc_id: str, entry: dict[str, Any], chunks: list[Chunk], missing: Iterable[str]) -> list[str]:
        """A document's chunks (in corpus order), and which of their hashes the cache lacks.

        Returns the hashes to embed: the missing ones no earlier document is already waiting for.
        """
        doc = _Pending(doc_id, entry, chunks, set(missing))
        new: list[str] = []
        with self._state:
            for h in doc.outstanding:
                waiters = self._waiting.get(h)
                if waiters is None:
                    self._waiting[h] = [doc]
                    new.append(h)
                else:
                    waiters.append(doc)
            self._pending.append(doc)
            self._settle()
        self._flush(final=False)
        return new

    def landed(self, hashes: Sequence[str], matrix: np.ndarray | None = None) -> None:
        """These vectors are in the cache now (any thread). With their raw `matrix`, the rows waiting documents
        need are kept until written, instead of being read back from the cache (a third of the CPU at 2560-d)."""
        if matrix is not None and self.cache.normalize:
            matrix = normalize_rows(np.array(matrix, dtype=np.float32))
        with self._state:
            for i, h in enumerate(hashes):
                waiters = self._waiting.pop(h, ())
                for doc in waiters:
                    doc.outstanding.discard(h)
                if matrix is not None and waiters:
                    self._vectors[h] = [matrix[i], len(waiters)]
            self._settle()
        self._flush(final=False)

    def failed(self, hashes: Sequence[str]) -> None:
        """These could not be embedded: their documents are left out (any thread)."""
        with self._state:
            for h in hashes:
                for doc in self._waiting.pop(h, ()):
                    doc.failed = True
            self._settle()  # written by the next add or landed, or by finish: this runs on the event loop

    def _settle(self) -> None:
        while self._pending and self._pending[0].settled:
            doc = self._pending.popleft()
            self._settled.append(doc)
            self._settled_rows += 0 if doc.failed else len(doc.chunks)

    def _flush(self, *, final: bool) -> None:
        """Write the settled prefix if it fills a row group (whatever it holds when final)."""
        if not self._writing.acquire(blocking=final):
            return  # another thread is writing: it, or the next call, takes these documents too
        try:
            while True:
                with self._state:
                    if not self._settled or (not final and self._settled_rows < self.rows_per_group):
                        return
                    docs = list(self._settled)
                    self._settled.clear()
                    self._settled_rows = 0
                self._write(docs)
        finally:
            self._writing.release()

    def _write(self, docs: list[_Pending]) -> None:
        rows: list[Chunk] = []
        held: dict[str, np.ndarray] = {}
        with self._state:
            for doc in docs:
                for h in {c.content_hash for c in doc.chunks}:  # each document counts once per vector it used
                    kept = self._vectors.get(h)
                    if kept is None:
                        continue
                    held[h] = kept[0]
                    kept[1] -= 1
                    if kept[1] <= 0:
                        del self._vectors[h]
        for doc in docs:
            if doc.failed:
                self.failed_docs[doc.doc_id] = doc.entry
                self.failed_chunks += len(doc.chunks)
            else:
                rows.extend(doc.chunks)
                self.written[doc.doc_id] = {**doc.entry, "chunks": len(doc.chunks)}
        if not rows:
            return
        hashes = [c.content_hash for c in rows]
        wanted = list(dict.fromkeys(h for h in hashes if h not in held))
        if wanted:  # cached before this run, or landed before the document that needs it was read
            held.update(zip(wanted, self.cache.get_many(wanted), strict=True))  # unit rows when normalising
        self.writer.write(chunk_table(rows, np.stack([held[h] for h in hashes]), self.meta))

    def settle_all(self) -> None:
        """Write every document that is left; after it, failed_docs and written are complete.

        Every document must be settled by now (embedded or failed): one that is not is a bug, not a row.
        """
        with self._state:
            stuck = [d.doc_id for d in self._pending]
        if stuck:
            self.abort()
            raise StoreError(f"{len(stuck)} documents never got their vectors (first: {stuck[0]})")
        self._flush(final=True)

    def finish(self, previous: Path | None = None, keep: set[str] | None = None) -> int:
        """Copy `previous`'s rows of the `keep` documents after the new ones, commit; the rows written."""
        self.settle_all()
        if previous is not None and keep:
            self._copy_rows(previous, keep)
        self.writer.commit()
        return self.writer.rows

    def _copy_rows(self, previous: Path, keep: set[str]) -> None:
        """The previous snapshot's rows of `keep` documents, a batch at a time (never its whole table)."""
        wanted = pa.array(sorted(keep), pa.string())
        try:
            source = pq.ParquetFile(previous, pre_buffer=False, buffer_size=1 << 20)
            for batch in source.iter_batches(batch_size=self.COPY_BATCH_ROWS, columns=self.schema.names):
                table = pa.Table.from_batches([batch])
                table = table.filter(pc.is_in(table.column("doc_id"), value_set=wanted))
                if table.num_rows:
                    self.writer.write(table.cast(self.schema))
        except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
            self.abort()
            raise StoreError(f"{previous}: cannot read the previous vectors: {e}") from None

    def abort(self) -> None:
        """Drop the file (idempotent): the run failed."""
        self.writer.abort()
