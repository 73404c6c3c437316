"""Incremental: diff a corpus against the live snapshot's manifest, and carry unchanged rows over.

Pure over Documents and Arrow tables; decides what to chunk and embed, never calls a provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .records import Document

__all__ = ["CorpusDiff", "diff_corpus", "diff_stream", "merge_tables"]


@dataclass
class CorpusDiff:
    """Documents of this run sorted into what the previous snapshot already holds and what it does not."""

    order: dict[str, int] = field(default_factory=dict)  # doc_id -> position in the corpus
    hashes: dict[str, str] = field(default_factory=dict)  # doc_id -> content hash, this run
    unchanged: list[str] = field(default_factory=list)
    added: list[Document] = field(default_factory=list)
    changed: list[Document] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def to_chunk(self) -> list[Document]:
        return self.added + self.changed

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed), "deleted": len(self.deleted),
                "unchanged": len(self.unchanged)}


def diff_corpus(docs: Iterable[Document], previous: Mapping[str, Mapping[str, Any]] | None) -> CorpusDiff:
    """Sort documents against the previous manifest's {doc_id: {"content_hash": ...}}.

    A document the previous run could not embed is absent from `previous`, so it counts as added.
    """
    diff = CorpusDiff()
    for _ in diff_stream(docs, previous, diff):
        pass
    return diff


def diff_stream(docs: Iterable[Document], previous: Mapping[str, Mapping[str, Any]] | None,
                diff: CorpusDiff) -> Iterator[Document]:
    """diff_corpus as it reads: yields each added or changed document at once; `diff` is whole at the end.

    So chunking and embedding start with the first file instead of after the whole corpus is read.
    """
    previous = previous or {}
    for doc in docs:
        diff.order[doc.doc_id] = len(diff.order)
        diff.hashes[doc.doc_id] = doc.content_hash
        before = previous.get(doc.doc_id)
        if before is None:
            diff.added.append(doc)
        elif before.get("content_hash") != doc.content_hash:
            diff.changed.append(doc)
        else:
            diff.unchanged.append(doc.doc_id)
            continue
        yield doc
    diff.deleted = sorted(set(previous) - set(diff.order))


def merge_tables(old: pa.Table | None, keep_docs: Iterable[str], new: pa.Table | None,
                 order: Mapping[str, int]) -> pa.Table:
    """Rows of `old` whose doc_id is in keep_docs plus all rows of `new`, in corpus order, then chunk order."""
    parts = []
    keep = list(keep_docs)
    if old is not None and keep:
        parts.append(old.filter(pc.is_in(old.column("doc_id"), value_set=pa.array(keep, pa.string()))))
    if new is not None and new.num_rows:
        parts.append(new)
    if not parts:
        raise ValueError("nothing to merge")
    parts = [p.replace_schema_metadata(None) for p in parts]
    merged = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    doc_pos = np.fromiter((order[d] for d in merged.column("doc_id").to_pylist()), dtype=np.int64,
                          count=merged.num_rows)
    chunk_pos = merged.column("chunk_index").to_numpy()
    perm = np.lexsort((chunk_pos, doc_pos))
    if np.array_equal(perm, np.arange(len(perm))):  # a fresh build comes in order: no copy of the vectors
        return merged
    return merged.take(pa.array(perm)).combine_chunks()
