"""Index selection: from vector count, dimension and a memory budget to ranked FAISS choices with reasons.

Pure: builds nothing, so it can be tested over any sizes. FAISS factory strings are the vocabulary,
parsed once here (`parse_factory`) into an IndexChoice that the build and search steps read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["KINDS", "IndexChoice", "candidate_indexes", "parse_factory", "read_batch_rows", "select_index"]

KINDS = ("flat", "hnsw", "ivfsq", "ivf", "ivfpq")  # auto's order of preference
# Exact below this: measured (bench/index.md, "Exact or approximate"), one exact single-threaded query scans
# ~5.9 G multiply-adds/s here, so its p50 is n*dim / EXACT_MACS_PER_MS. A graph at the target recall answers
# in 0.07-0.2 ms on easy data and ~0.9 ms (1024-d) at efSearch 384, what real chunks needed: the ANN is
# faster from ~5k vectors (1024-d) or ~7.5k (384-d). Exact is kept while its p50 stays under FLAT_MAX_MS
# anyway: it needs no build or tuning, has recall 1.0 and is updated in place (update.py) where a graph
# is rebuilt. 2 ms: 11.5k x 1024, 30k x 384, 4.6k x 2560.
EXACT_MACS_PER_MS = 5_900_000
FLAT_MAX_MS = 2.0
FLAT_MAX_FLOPS = int(FLAT_MAX_MS * EXACT_MACS_PER_MS)
HNSW_M = 32
# Graph construction costs ~10 min for 1M x 1024 on 2 cores, and measured there (bench/index.md) the graph
# lost more recall on held-out queries than 8-bit inverted lists did, at 3x their memory: lists beyond this.
HNSW_MAX_VECTORS = 500_000
OPQ_MIN_VECTORS = 100_000  # OPQ's rotation pays for its training time only on large collections
OPQ_TRAIN_MAX = 65_536  # FAISS's OPQMatrix.max_train_points
OPQ_COPIES = 4
COARSE_HNSW_MIN_LISTS = 8192  # from here a graph over the centroids beats scanning them all
TRAIN_PER_LIST = 40  # k-means training points per inverted list (FAISS warns below 39)
PQ_TRAIN_MIN = 256 * 40  # 8-bit PQ codebooks want ~40 points per centroid too
BATCH_BYTES = 64 << 20  # vectors read from Parquet per batch
READ_BUFFERS = 8  # a batch, its decoded row group and Arrow's allocator cache: measured ~0.5 GiB at 64 MiB
RUNTIME_BYTES = 256 << 20  # Python, NumPy, Arrow and FAISS themselves, measured at ~250 MiB
_ID_BYTES = 8

_FACTORY = re.compile(
    r"^(?:OPQ(?P<opq>\d+)(?:_(?P<opq_d>\d+))?,)?"
    r"(?:(?P<flat>Flat)|HNSW(?P<hnsw>\d+)(?:,Flat)?|"
    r"IVF(?P<nlist>\d+)(?:_HNSW(?P<coarse_m>\d+))?,(?:(?P<ivf_flat>Flat)|(?P<sq>SQ8|SQfp16)|"
    r"PQ(?P<pq_m>\d+)(?:x(?P<pq_bits>\d+))?))$"
)
_SQ_BYTES = {"SQ8": 1, "SQfp16": 2}


@dataclass(frozen=True)
class IndexChoice:
    kind: str  # one of KINDS
    factory: str  # FAISS index_factory string
    estimated_bytes: int  # the index in memory (≈ its file size)
    reason: str
    params: dict[str, int] = field(default_factory=dict)  # nlist, M, m, bits, opq; search params are tuned later
    training_bytes: int = 0  # training: the sample, centroids, OPQ's copies (freed before vectors are added)
    batch_bytes: int = 0  # one batch of vectors read while adding

    @property
    def peak_bytes(self) -> int:
        """The build process's peak memory (RSS): the runtime, plus training or the whole index with its read
        buffers. Storage is allocated once at its final size (build.py), so appends never double it."""
        buffers = READ_BUFFERS * self.batch_bytes  # Arrow keeps them through training (measured)
        return RUNTIME_BYTES + buffers + max(self.training_bytes, self.estimated_bytes)

    @property
    def search_param(self) -> str | None:
        """The knob that trades speed for recall: efSearch (graph), nprobe (inverted lists), none (exact)."""
        return {"hnsw": "efSearch", "flat": None}.get(self.kind, "nprobe")

    @property
    def train_rows(self) -> int:
        """How many vectors training wants (0: no training)."""
        nlist = self.params.get("nlist", 0)
        if not nlist:
            return 0
        return max(nlist * TRAIN_PER_LIST, PQ_TRAIN_MIN if self.kind == "ivfpq" else 0)


def read_batch_rows(dim: int) -> int:
    """Rows per Parquet read batch: ~64 MiB of float32 vectors."""
    return max(1024, BATCH_BYTES // max(1, dim * 4))


def parse_factory(factory: str, n: int, dim: int, reason: str = "") -> IndexChoice:
    """The one parser of factory strings: kind, parameters and memory estimate of `factory` for n x dim.

    Understands Flat, HNSW{M}[,Flat], [OPQ{m}[_{d}],]IVF{nlist}[_HNSW{M}],{Flat|SQ8|SQfp16|PQ{m}[x{bits}]}.
    Raises ValueError for anything else.
    """
    match = _FACTORY.match(factory.replace(" ", ""))
    if match is None:
        raise ValueError(f"unsupported index factory {factory!r}; use one of {', '.join(KINDS)} or a string "
                         "like 'HNSW32', 'IVF1024,Flat', 'IVF1024,SQ8', 'OPQ32_1024,IVF1024,PQ32x8'")
    g = match.groupdict()
    params: dict[str, int] = {"dim": dim}
    batch = min(n, read_batch_rows(dim)) * dim * 4
    if g["flat"]:
        return IndexChoice("flat", factory, n * dim * 4, reason, params, 0, batch)
    if g["hnsw"]:
        m = int(g["hnsw"])
        params["M"] = m
        # level 0 keeps 2M int32 links a vector, upper levels ~1/M as many; plus level bookkeeping
        est = int(n * (dim * 4 + 2 * m * 4 * 1.07 + 12))
        return IndexChoice("hnsw", factory, est, reason, params, 0, batch)
    nlist = int(g["nlist"])
    params["nlist"] = nlist
    est = n * _ID_BYTES + nlist * dim * 4 + nlist * 40  # ids, centroids, list headers
    if g["coarse_m"]:
        params["coarse_M"] = int(g["coarse_m"])
        est += nlist * 2 * int(g["coarse_m"]) * 4
    if g["ivf_flat"]:
        kind, code = "ivf", dim * 4
    elif g["sq"]:
        kind, code = "ivfsq", dim * _SQ_BYTES[g["sq"]]
        params["sq_bytes"] = _SQ_BYTES[g["sq"]]
    else:
        kind = "ivfpq"
        m, bits = int(g["pq_m"]), int(g["pq_bits"] or 8)
        if dim % m:
            raise ValueError(f"{factory}: PQ{m} needs a dimension divisible by {m}, not {dim}")
        params.update(m=m, bits=bits)
        code = math.ceil(m * bits / 8)
        est += (1 << bits) * dim * 4  # codebooks
    if g["opq"]:
        params["opq"] = int(g["opq"])
        est += dim * dim * 4
    choice = IndexChoice(kind, factory, est + n * code, reason, params, 0, batch)
    train_rows = min(n, choice.train_rows)
    training = train_rows * dim * 4 + nlist * dim * 4  # the sample and the centroids
    if kind != "ivf":  # codes are trained on residuals to the centroids: a second copy of the sample
        training += train_rows * dim * 4
    if g["opq"]:  # OPQ's rotation trains on <= 65,536 rows and holds ~4 more copies of them (measured)
        training += OPQ_COPIES * min(train_rows, OPQ_TRAIN_MAX) * dim * 4
    return IndexChoice(kind, factory, choice.estimated_bytes, reason, params, training, batch)


def _nlist(n: int) -> int:
    """A power of two near 2*sqrt(n) (~500 vectors a list at 1M; coarse search cheap at 1024-d), trainable."""
    nlist = min(65536, 2 ** round(math.log2(2 * math.sqrt(max(n, 1)))))
    while nlist > 1 and nlist * TRAIN_PER_LIST > n:  # enough training points for every centroid
        nlist //= 2
    return nlist


def _ivf_prefix(n: int, nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= COARSE_HNSW_MIN_LISTS else f"IVF{nlist}"


def _pq(n: int, dim: int, budget: int, nlist: int) -> IndexChoice | None:
    """The richest PQ code (at most 128 bytes, at least 4 dimensions a sub-quantiser) whose build fits;
    with an OPQ rotation in front when the collection is large and its training fits too."""
    for m in (128, 96, 64, 48, 32, 24, 16, 12, 8, 4):
        if dim % m or dim // m < 4:
            continue
        for opq in ([f"OPQ{m}_{dim},"] if n >= OPQ_MIN_VECTORS else []) + [""]:
            choice = parse_factory(f"{opq}{_ivf_prefix(n, nlist)},PQ{m}x8", n, dim)
            if choice.peak_bytes <= budget:
                return choice
    return None


def _mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def candidate_indexes(n: int, dim: int, budget_bytes: int) -> list[IndexChoice]:
    """Every family's index for n x dim, best first (by the order we prefer them), each with its reason.

    Choices whose build peak exceeds the budget are left out; the list may be empty.
    """
    nlist = _nlist(n)
    out: list[IndexChoice] = []
    flat = parse_factory("Flat", n, dim)
    if n * dim <= FLAT_MAX_FLOPS and flat.peak_bytes <= budget_bytes:
        out.append(_with_reason(flat, f"{n} x {dim}: exact search is cheap at this size (~{n * dim / EXACT_MACS_PER_MS:.1f}"
                                      f" ms a query, {_mib(flat.estimated_bytes)}), needs no build and updates in place"))
    hnsw = parse_factory(f"HNSW{HNSW_M},Flat", n, dim)
    if n <= HNSW_MAX_VECTORS and hnsw.peak_bytes <= budget_bytes:
        out.append(_with_reason(hnsw, f"{n} vectors fit the budget as a graph ({_mib(hnsw.estimated_bytes)}): "
                                      "fastest queries at high recall"))
    if n >= 1000:
        prefix = _ivf_prefix(n, nlist)
        ivf = parse_factory(f"{prefix},Flat", n, dim)
        sq = parse_factory(f"{prefix},SQ8", n, dim)
        if sq.peak_bytes <= budget_bytes:
            out.append(_with_reason(sq, f"{n} vectors: {nlist} inverted lists of 8-bit scalar codes "
                                        f"({_mib(sq.estimated_bytes)}, a quarter of full vectors); scans 4x fewer "
                                        "bytes a probe at nearly full-precision recall"))
        if ivf.peak_bytes <= budget_bytes:
            out.append(_with_reason(ivf, f"{n} vectors: {nlist} inverted lists over full vectors "
                                         f"({_mib(ivf.estimated_bytes)}): exact distances within the lists"))
        pq = _pq(n, dim, budget_bytes, nlist)
        if pq is not None:
            out.append(_with_reason(pq, f"vectors do not fit even as 8-bit codes ({_mib(sq.estimated_bytes)}): "
                                        f"{pq.params['m']}-byte product-quantised codes ({_mib(pq.estimated_bytes)})"))
    if not out and flat.peak_bytes <= budget_bytes:
        out.append(_with_reason(flat, f"{n} x {dim}: too few vectors to train an approximate index"))
    return out


def _with_reason(choice: IndexChoice, reason: str) -> IndexChoice:
    return IndexChoice(choice.kind, choice.factory, choice.estimated_bytes, reason, choice.params,
                       choice.training_bytes, choice.batch_bytes)


def select_index(n: int, dim: int, budget_bytes: int, kind: str = "auto") -> IndexChoice:
    """The index for n vectors of `dim` within `budget_bytes`; `kind` forces a family or gives a factory string.

    Raises ValueError, with the numbers and a remedy, when nothing fits the budget.
    """
    if kind == "auto":
        ranked = candidate_indexes(n, dim, budget_bytes)
        if ranked:
            return ranked[0]
        smallest = parse_factory(f"{_ivf_prefix(n, _nlist(n))},PQ{_smallest_m(dim)}x8", n, dim)
        raise ValueError(f"{n} x {dim} vectors need at least {_mib(smallest.peak_bytes)} even as "
                         f"{smallest.factory}; the budget is {_mib(budget_bytes)}: raise --memory-budget")
    nlist = _nlist(n)
    if kind == "flat":
        choice = parse_factory("Flat", n, dim, "exact search, as asked")
    elif kind == "hnsw":
        choice = parse_factory(f"HNSW{HNSW_M},Flat", n, dim, "graph index, as asked")
    elif kind == "ivf":
        choice = parse_factory(f"{_ivf_prefix(n, nlist)},Flat", n, dim, f"{nlist} inverted lists, as asked")
    elif kind == "ivfsq":
        choice = parse_factory(f"{_ivf_prefix(n, nlist)},SQ8", n, dim, f"{nlist} lists of 8-bit codes, as asked")
    elif kind == "ivfpq":
        choice = _pq(n, dim, budget_bytes, nlist) or parse_factory(
            f"{_ivf_prefix(n, nlist)},PQ{_smallest_m(dim)}x8", n, dim)
        choice = _with_reason(choice, f"{nlist} lists of {choice.params['m']}-byte PQ codes, as asked")
    else:
        choice = parse_factory(kind, n, dim, "factory string, as given")
    if choice.peak_bytes > budget_bytes:
        raise ValueError(f"{choice.factory} over {n} x {dim} needs {_mib(choice.peak_bytes)} to build "
                         f"({_mib(choice.estimated_bytes)} index, {_mib(READ_BUFFERS * choice.batch_bytes)} read "
                         f"buffers, {_mib(RUNTIME_BYTES)} runtime); the budget is {_mib(budget_bytes)}: "
                         "raise --memory-budget or use --index-type auto")
    return choice


def _smallest_m(dim: int) -> int:
    return next(m for m in (4, 2, 1) if dim % m == 0)
