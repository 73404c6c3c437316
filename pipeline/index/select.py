"""Index selection: from vector count, dimension and a memory budget to a ranked FAISS choice.

Pure: builds nothing, so it can be tested over any sizes. FAISS factory strings are the vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["IndexChoice", "estimate_bytes", "select_index"]

FLAT_MAX_FLOPS = 60_000_000  # n*dim below this: exact search answers in a few ms, so why approximate
HNSW_M = 32
OPQ_MIN_VECTORS = 100_000


@dataclass(frozen=True)
class IndexChoice:
    kind: str  # "flat", "hnsw", "ivf", "ivfpq"
    factory: str  # FAISS index_factory string
    estimated_bytes: int
    reason: str
    params: dict[str, int] = field(default_factory=dict)  # nlist, m, M; search params are tuned later


def _nlist(n: int) -> int:
    return max(1, min(65536, int(4 * math.sqrt(n))))


def _pq_m(dim: int, n: int, budget: int, nlist: int) -> int:
    """The largest number of PQ sub-quantisers (dividing dim, <= 64 bytes a code) whose codes fit."""
    for m in (64, 48, 32, 24, 16, 12, 8, 4):
        if dim % m == 0 and dim // m >= 4 and n * (m + 8) + nlist * dim * 4 + dim * dim * 4 <= budget:
            return m
    return 0


def estimate_bytes(kind: str, n: int, dim: int, *, nlist: int = 0, m: int = 0) -> int:
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":
        return int(n * (dim * 4 + HNSW_M * 2 * 4 * 1.1))
    if kind == "ivf":
        return n * (dim * 4 + 8) + nlist * dim * 4
    if kind == "ivfpq":
        return n * (m + 8) + nlist * dim * 4 + dim * dim * 4
    raise ValueError(kind)


def select_index(n: int, dim: int, budget_bytes: int, kind: str = "auto") -> IndexChoice:
    """The index for n vectors of `dim` within `budget_bytes`; `kind` forces a family.

    Raises ValueError when even the smallest product-quantised index does not fit.
    """
    nlist = _nlist(n)
    flat = estimate_bytes("flat", n, dim)
    hnsw = estimate_bytes("hnsw", n, dim)
    ivf = estimate_bytes("ivf", n, dim, nlist=nlist)
    if kind == "flat" or (kind == "auto" and n * dim <= FLAT_MAX_FLOPS and flat <= budget_bytes):
        return IndexChoice("flat", "Flat", flat, f"{n} x {dim}: exact search is cheap at this size")
    if kind == "hnsw" or (kind == "auto" and hnsw <= budget_bytes and n <= 5_000_000):
        return IndexChoice("hnsw", f"HNSW{HNSW_M},Flat", hnsw,
                           f"{n} vectors fit the budget as a graph ({hnsw / 2**20:.0f} MiB)", {"M": HNSW_M})
    if kind == "ivf" or (kind == "auto" and ivf <= budget_bytes):
        return IndexChoice("ivf", f"IVF{nlist},Flat", ivf,
                           f"{n} vectors: inverted lists over full vectors ({ivf / 2**20:.0f} MiB)",
                           {"nlist": nlist})
    m = _pq_m(dim, n, budget_bytes, nlist)
    if not m:
        if kind == "ivfpq":
            m = next(x for x in (16, 8, 4, 2, 1) if dim % x == 0 and (dim // x >= 4 or x == 1))
        else:
            need = estimate_bytes("ivfpq", n, dim, nlist=nlist, m=8)
            raise ValueError(f"{n} x {dim} vectors need at least {need / 2**20:.0f} MiB even as IVF-PQ; "
                             f"the budget is {budget_bytes / 2**20:.0f} MiB: raise --memory-budget")
    # OPQ's rotation pays for its training time only on large collections.
    opq = f"OPQ{m}_{dim}," if n >= OPQ_MIN_VECTORS else ""
    est = estimate_bytes("ivfpq", n, dim, nlist=nlist, m=m)
    return IndexChoice("ivfpq", f"{opq}IVF{nlist},PQ{m}x8", est,
                       f"full vectors ({flat / 2**20:.0f} MiB) exceed the budget: {m}-byte PQ codes "
                       f"({est / 2**20:.0f} MiB)", {"nlist": nlist, "m": m})
