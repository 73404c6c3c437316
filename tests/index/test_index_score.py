import faiss
import numpy as np
import pytest

from pipeline.index.score import (
    ExactTopK,
    drop_self,
    latency_ms,
    recall_at_k,
    set_search_param,
    single_thread,
    tune_search_param,
)
from pipeline.index.select import parse_factory
from pipeline.store import normalize_rows


def _data(n: int = 3000, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(30, dim)).astype(np.float32)
    return normalize_rows(centers[rng.integers(0, 30, n)] + 0.4 * rng.normal(size=(n, dim)).astype(np.float32))


@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
def test_streamed_exact_top_k_equals_one_shot_knn(metric: int) -> None:
    data, queries = _data(), _data(50, seed=1)
    exact = ExactTopK(queries, 10, metric)
    for start in range(0, len(data), 333):  # uneven blocks, the last one short
        exact.add(data[start:start + 333])
    _, truth = faiss.knn(queries, data, 10, metric=metric)
    assert recall_at_k(exact.ids, truth) == 1.0


def test_exact_top_k_with_blocks_smaller_than_k() -> None:
    data, queries = _data(25), _data(3, seed=1)
    exact = ExactTopK(queries, 10, faiss.METRIC_INNER_PRODUCT)
    for start in range(0, 25, 4):
        exact.add(data[start:start + 4])
    _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert (np.sort(exact.ids, 1) == np.sort(truth, 1)).all()


def test_recall_counts_overlap_and_ignores_padding() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    found = np.array([[4, 3, 9, 9], [6, 5, 7, 8]])
    assert recall_at_k(found, truth) == pytest.approx(4 / 6)


def _ivf(data: np.ndarray) -> faiss.Index:
    index = faiss.index_factory(data.shape[1], "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(data)
    index.add(data)
    return index


def test_tuning_finds_the_smallest_nprobe_reaching_the_target() -> None:
    data = _data()
    queries = data[::30]
    _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    index = _ivf(data)
    choice = parse_factory("IVF64,Flat", len(data), data.shape[1])
    tuning = tune_search_param(index, choice, queries, truth, 0.95)
    (value,) = tuning.param.values()
    assert tuning.recall >= 0.95
    candidates = [v for v, _ in tuning.curve]
    smaller = [v for v in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if v < value]
    if smaller:  # the next value down misses the target
        set_search_param(index, {"nprobe": smaller[-1]})
        _, found = index.search(queries, 10)
        assert recall_at_k(found, truth) < 0.95
    assert index.nprobe == value or smaller  # the tuned value is left applied
    assert candidates == sorted(candidates) and len(candidates) <= 8  # galloping, not every value


def test_unreachable_target_settles_on_the_cheapest_value_near_the_best() -> None:
    data = _data()
    queries = data[::30]
    _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    index = faiss.index_factory(32, "IVF64,PQ4x4", faiss.METRIC_INNER_PRODUCT)  # coarse codes: low plateau
    faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    with single_thread():
        index.train(data)
    index.add(data)
    tuning = tune_search_param(index, parse_factory("IVF64,PQ4x4", 3000, 32), queries, truth, 0.999)
    best = max(r for _, r in tuning.curve)
    assert tuning.recall >= best - 0.01
    assert tuning.param["nprobe"] == min(v for v, r in tuning.curve if r >= best - 0.01)


def test_exact_index_needs_no_tuning_and_latency_is_measured() -> None:
    data = _data(500)
    index = faiss.IndexFlatIP(32)
    index.add(data)
    _, truth = faiss.knn(data[:20], data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    tuning = tune_search_param(index, parse_factory("Flat", 500, 32), data[:20], truth, 0.95)
    assert tuning.param == {} and tuning.recall == 1.0
    p50, p95 = latency_ms(index, data[:20], 10)
    assert 0 < p50 <= p95
    assert faiss.omp_get_max_threads() >= 1  # single_thread() restored the thread count


def test_drop_self_leaves_out_the_query_itself() -> None:
    ids = np.array([[7, 1, 2], [3, 9, 4], [5, 6, -1]])
    assert drop_self(ids, np.array([7, 9, 8]), 2).tolist() == [[1, 2], [3, 4], [5, 6]]


def test_self_matches_do_not_flatter_tuned_recall() -> None:
    data = _data()
    qids = np.arange(0, 3000, 30)
    queries = data[qids]
    _, truth = faiss.knn(queries, data, 11, metric=faiss.METRIC_INNER_PRODUCT)
    index = _ivf(data)
    choice = parse_factory("IVF64,Flat", len(data), 32)
    set_search_param(index, {"nprobe": 1})
    with_self = tune_search_param(index, choice, queries, truth[:, :10], 2.0)  # unreachable: see the curve
    without = tune_search_param(index, choice, queries, truth, 2.0, query_ids=qids)
    assert dict(without.curve)[1] < dict(with_self.curve)[1]
