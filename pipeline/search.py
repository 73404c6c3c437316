"""Search: a query vector against a loaded index, to ranked Hits with their source rows.

Sync and pure over (index, rows); embedding the query and refusing foreign models happen in api.py.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow as pa

from .records import Hit

__all__ = ["search_vectors"]


def search_vectors(index: faiss.Index, rows: pa.Table, query: np.ndarray, k: int) -> list[Hit]:
    """Top-k hits for one query vector (already normalised like the index's vectors)."""
    k = max(1, min(k, index.ntotal))
    scores, ids = index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), k)
    found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
    if not found:
        return []
    picked = rows.take(pa.array([i for _, i in found], pa.int64())).to_pylist()
    return [
        Hit(rank=rank, score=score, chunk_id=row["chunk_id"], doc_id=row["doc_id"],
            source_path=row["source_path"], chunk_index=row["chunk_index"], char_start=row["char_start"],
            char_end=row["char_end"], text=row["text"], metadata=json.loads(row["metadata"] or "{}"))
        for rank, ((score, _), row) in enumerate(zip(found, picked, strict=True), 1)
    ]
