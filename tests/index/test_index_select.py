import pytest

from pipeline.index.select import KINDS, candidate_indexes, parse_factory, select_index

GiB = 2**30
MiB = 2**20


@pytest.mark.parametrize(("n", "dim", "budget", "kind"), [
    (500, 384, GiB, "flat"),
    (20_000, 384, GiB, "flat"),  # ~7.7 M multiply-adds a query: exact is cheap
    (11_000, 1024, GiB, "flat"),  # 1.9 ms a query (bench/index.md): under FLAT_MAX_MS
    (12_000, 1024, GiB, "hnsw"),  # 2.1 ms: a graph answers in < 1 ms
    (15_000, 1024, GiB, "hnsw"),
    (30_000, 384, GiB, "flat"),
    (31_000, 384, GiB, "hnsw"),
    (4_500, 2560, GiB, "flat"),
    (5_000, 2560, GiB, "hnsw"),
    (40_000, 384, GiB, "hnsw"),
    (50_000, 1024, GiB, "hnsw"),
    (200_000, 1024, 4 * GiB, "hnsw"),
    (200_000, 1024, int(1.5 * GiB), "ivfsq"),  # the graph and its full vectors do not fit
    (1_000_000, 1024, 8 * GiB, "ivfsq"),  # beyond the graph's size limit: 8-bit lists (bench/index.md)
    (1_000_000, 1024, 2 * GiB, "ivfsq"),
    (1_000_000, 1024, int(1.5 * GiB), "ivfpq"),
    (10_000_000, 1024, 16 * GiB, "ivfsq"),
    (10_000_000, 2560, 8 * GiB, "ivfpq"),
])
def test_auto_choice_follows_size_and_budget(n: int, dim: int, budget: int, kind: str) -> None:
    choice = select_index(n, dim, budget)
    assert choice.kind == kind
    assert choice.peak_bytes <= budget
    assert choice.reason


@pytest.mark.parametrize("budget", [GiB // 4, GiB, 2 * GiB, 4 * GiB, 8 * GiB, 64 * GiB])
@pytest.mark.parametrize("n", [5_000, 100_000, 1_000_000, 10_000_000])
def test_candidates_fit_and_are_ranked(n: int, budget: int) -> None:
    ranked = candidate_indexes(n, 768, budget)
    assert all(c.peak_bytes <= budget for c in ranked)
    order = [KINDS.index(c.kind) for c in ranked]
    assert order == sorted(order)  # flat, hnsw, ivfsq, ivf, ivfpq
    if ranked:
        assert select_index(n, 768, budget) == ranked[0]


def test_more_budget_never_gives_a_smaller_index() -> None:
    sizes = [select_index(1_000_000, 1024, int(b * GiB)).estimated_bytes for b in (1.5, 2, 4, 8)]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize(("factory", "kind", "params"), [
    ("Flat", "flat", {}),
    ("HNSW32,Flat", "hnsw", {"M": 32}),
    ("HNSW16", "hnsw", {"M": 16}),
    ("IVF1024,Flat", "ivf", {"nlist": 1024}),
    ("IVF4096_HNSW32,SQ8", "ivfsq", {"nlist": 4096, "coarse_M": 32, "sq_bytes": 1}),
    ("IVF256,SQfp16", "ivfsq", {"nlist": 256, "sq_bytes": 2}),
    ("OPQ64_1024,IVF2048,PQ64x8", "ivfpq", {"nlist": 2048, "m": 64, "bits": 8, "opq": 64}),
    ("IVF64,PQ16", "ivfpq", {"nlist": 64, "m": 16, "bits": 8}),
])
def test_factory_strings_are_parsed_once_into_a_choice(factory: str, kind: str, params: dict[str, int]) -> None:
    choice = parse_factory(factory, 100_000, 1024)
    assert choice.kind == kind
    assert params.items() <= choice.params.items()
    assert choice.search_param == {"flat": None, "hnsw": "efSearch"}.get(kind, "nprobe")
    assert choice.estimated_bytes > 0


def test_memory_estimates_match_the_bytes_per_vector() -> None:
    n, d = 1_000_000, 1024
    assert parse_factory("Flat", n, d).estimated_bytes == n * d * 4
    ivf = parse_factory("IVF1024,Flat", n, d).estimated_bytes
    sq = parse_factory("IVF1024,SQ8", n, d).estimated_bytes
    pq = parse_factory("IVF1024,PQ64x8", n, d).estimated_bytes
    assert ivf - sq == n * d * 3  # 4 bytes a dimension against 1
    assert sq - pq == pytest.approx(n * (d - 64), rel=0.01)
    hnsw = parse_factory("HNSW32", n, d).estimated_bytes
    assert n * (d * 4 + 256) < hnsw < n * (d * 4 + 320)  # 2*M int32 links at level 0, plus upper levels


def test_training_memory_counts() -> None:
    ivf = parse_factory("IVF1024,Flat", 1_000_000, 1024)
    assert ivf.train_rows == 1024 * 40 and ivf.training_bytes == (1024 * 40 + 1024) * 1024 * 4  # sample, centroids
    sample = 40_960 * 1024 * 4
    assert parse_factory("IVF1024,SQ8", 1_000_000, 1024).training_bytes == ivf.training_bytes + sample  # residuals
    opq = parse_factory("OPQ64_1024,IVF1024,PQ64x8", 1_000_000, 1024)
    assert opq.training_bytes == ivf.training_bytes + sample + 4 * sample  # + OPQ's working copies
    assert parse_factory("IVF16,PQ8x8", 1_000_000, 64).train_rows >= 256 * 39  # PQ codebooks want more
    assert parse_factory("HNSW32", 1000, 64).train_rows == 0


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfsq", "ivfpq"])
def test_forced_kind(kind: str) -> None:
    choice = select_index(200_000, 256, 8 * GiB, kind)
    assert choice.kind == kind and "as asked" in choice.reason


def test_a_factory_string_may_be_given() -> None:
    assert select_index(100_000, 64, GiB, "IVF256,SQ8").factory == "IVF256,SQ8"
    with pytest.raises(ValueError, match="unsupported index factory"):
        select_index(100_000, 64, GiB, "LSH")
    with pytest.raises(ValueError, match="divisible"):
        select_index(100_000, 100, GiB, "IVF256,PQ64")


def test_nlist_leaves_enough_training_points() -> None:
    for n in (1_000, 5_000, 40_000, 1_000_000):
        choice = select_index(n, 64, GiB, "ivf")
        assert choice.params["nlist"] * 40 <= n
    assert select_index(1_000_000, 64, GiB, "ivf").params["nlist"] == 2048
    assert select_index(10_000_000, 64, 8 * GiB, "ivf").factory.startswith("IVF8192_HNSW32,")


def test_large_collections_get_opq_when_its_training_fits() -> None:
    pq = select_index(1_000_000, 1024, 4 * GiB, "ivfpq")
    assert pq.factory == "OPQ128_1024,IVF2048,PQ128x8"
    tight = select_index(1_000_000, 1024, int(1.5 * GiB))  # OPQ's training copies would not fit: plain PQ
    assert tight.kind == "ivfpq" and tight.factory == "IVF2048,PQ128x8"
    assert not select_index(50_000, 1024, GiB, "ivfpq").factory.startswith("OPQ")


def test_impossible_budget_names_the_numbers_and_a_remedy() -> None:
    with pytest.raises(ValueError, match=r"MiB.*--memory-budget"):
        select_index(100_000_000, 1024, 100 * MiB)
    with pytest.raises(ValueError, match=r"needs .* MiB to build"):
        select_index(1_000_000, 1024, GiB, "flat")
