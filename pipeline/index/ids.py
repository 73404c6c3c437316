"""Row ids: a FAISS id is the position of its chunk in the snapshot's rows (vectors.parquet order = rows.arrow).

Wraps exact indexes so their ids can be renumbered, removes rows and renumbers the rest, for build.py and
update.py; knows no files and no snapshots. Inverted lists store their ids already; graphs cannot remove.
"""

from __future__ import annotations

import contextlib

import faiss
import numpy as np

__all__ = ["ID_LAYOUT", "can_remove", "remove_and_renumber", "with_row_ids"]

# meta.json's `id_layout`: indexes without it were built before ids could be renumbered (positions only)
ID_LAYOUT = "row-position-v1"


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except (RuntimeError, AttributeError):
        return None


def with_row_ids(index: faiss.Index) -> faiss.Index:
    """A flat index (ids implied by position) wrapped in an IndexIDMap2 with ids 0..n-1; others as they are.

    The map lets update.py remove vectors and renumber the rest without moving them again.
    """
    inner = faiss.downcast_index(index)
    if not isinstance(inner, faiss.IndexFlat):
        return index
    wrapped = faiss.IndexIDMap2(faiss.IndexFlat(inner.d, inner.metric_type))  # FAISS wraps only empty indexes
    wrapped.index = inner
    wrapped.referenced_objects = [index, inner]  # keeps the owner of `inner` alive: the wrapper does not own it
    wrapped.ntotal = inner.ntotal
    faiss.copy_array_to_vector(np.arange(inner.ntotal, dtype=np.int64), wrapped.id_map)
    wrapped.construct_rev_map()
    return wrapped


def can_remove(index: faiss.Index) -> bool:
    """Whether `index` can drop vectors by id and renumber the rest: ID-mapped exact indexes and inverted lists."""
    if isinstance(faiss.downcast_index(index), faiss.IndexIDMap2):
        return True
    ivf = _ivf(index)
    if ivf is None:
        return False
    with contextlib.suppress(AttributeError):
        return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists)
    return False


def remove_and_renumber(index: faiss.Index, new_id: np.ndarray) -> int:
    """Drop the vectors whose new_id[old id] is -1, and give every other vector its new id; the number dropped.

    `new_id` maps every current id (0..ntotal-1) to its row in the new rows table. Raises ValueError when
    `index` cannot remove (see can_remove).
    """
    gone = np.flatnonzero(new_id < 0).astype(np.int64)
    if len(gone):
        index.remove_ids(faiss.IDSelectorBatch(len(gone), faiss.swig_ptr(gone)))
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap2):
        ids = faiss.vector_to_array(outer.id_map)
        faiss.copy_array_to_vector(new_id[ids].astype(np.int64), outer.id_map)
        outer.construct_rev_map()
        return len(gone)
    ivf = _ivf(index)
    if ivf is None or not can_remove(index):
        raise ValueError(f"{type(outer).__name__} cannot remove vectors")
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)  # a view: renumbered in place
            ids[:] = new_id[ids]
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.make_direct_map(True)
    return len(gone)
