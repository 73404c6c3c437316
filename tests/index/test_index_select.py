import pytest

from pipeline.index.select import estimate_bytes, select_index

GiB = 2**30


@pytest.mark.parametrize(("n", "dim", "budget", "kind"), [
    (500, 384, GiB, "flat"),
    (50_000, 1024, GiB, "flat"),
    (200_000, 1024, 4 * GiB, "hnsw"),
    (1_000_000, 1024, 8 * GiB, "hnsw"),
    (1_000_000, 1024, 4 * GiB, "ivf"),
    (1_000_000, 1024, 1 * GiB, "ivfpq"),
    (10_000_000, 2560, 4 * GiB, "ivfpq"),
])
def test_auto_choice_follows_size_and_budget(n: int, dim: int, budget: int, kind: str) -> None:
    choice = select_index(n, dim, budget)
    assert choice.kind == kind
    assert choice.estimated_bytes <= budget
    assert choice.reason


def test_forced_kind_and_factory_strings() -> None:
    assert select_index(1000, 64, GiB, "hnsw").factory == "HNSW32,Flat"
    ivf = select_index(100_000, 64, GiB, "ivf")
    assert ivf.factory == f"IVF{ivf.params['nlist']},Flat"
    pq = select_index(1_000_000, 1024, GiB)
    assert pq.factory.startswith("OPQ") and f"PQ{pq.params['m']}x8" in pq.factory


def test_impossible_budget_names_the_numbers() -> None:
    with pytest.raises(ValueError, match="MiB"):
        select_index(100_000_000, 1024, 100 * 2**20)


def test_estimates_grow_with_n() -> None:
    for kind in ("flat", "hnsw", "ivf", "ivfpq"):
        assert estimate_bytes(kind, 2000, 64, nlist=10, m=8) > estimate_bytes(kind, 1000, 64, nlist=10, m=8)
