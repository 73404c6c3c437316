"""The sharded build's parts that need no Ray: row ranges, the shard plan, a shard's task, the top-k merge."""

from pathlib import Path

import faiss
import numpy as np
import pytest
from test_index_build import make_snapshot

from pipeline.index.score import ExactTopK, single_thread
from pipeline.index.select import RUNTIME_BYTES, parse_factory
from pipeline.index.sharded import add_shard, plan_shards, shard_ranges
from pipeline.store import iter_vector_batches


def _covers(ranges: list[tuple[int, int]], n: int) -> bool:
    return ranges[0][0] == 0 and ranges[-1][1] == n and all(
        a < b == c for (a, b), (c, _) in zip(ranges, [*ranges[1:], (n, n)], strict=True))


def test_ranges_cover_every_row_once_and_follow_row_groups_when_there_are_enough() -> None:
    groups = [500] * 8
    ranges = shard_ranges(groups, 3)
    assert _covers(ranges, 4000) and len(ranges) == 3
    assert all(start % 500 == 0 for start, _ in ranges)  # no row group read by two tasks
    one_group = shard_ranges([4000], 3)
    assert _covers(one_group, 4000) and [b - a for a, b in one_group] == [1333, 1334, 1333]
    assert shard_ranges([3], 8) == [(0, 1), (1, 2), (2, 3)] and shard_ranges([], 2) == []
    uneven = shard_ranges([10, 3000, 10, 10], 2)  # snapping may give fewer, never empty, ranges
    assert _covers(uneven, 3030) and all(b > a for a, b in uneven)


def test_more_shards_when_a_task_or_the_merge_would_exceed_the_budget() -> None:
    n, dim = 1_000_000, 1024
    choice = parse_factory("IVF2048,SQ8", n, dim)
    groups = [32_768] * (n // 32_768) + [n % 32_768]
    roomy = plan_shards(choice, n, groups, 8 << 30, workers=2)
    assert len(roomy.ranges) == 2 and roomy.task_peak_bytes < roomy.merge_peak_bytes < 8 << 30
    budget = RUNTIME_BYTES + choice.estimated_bytes + (200 << 20)  # the merge holds the index and one shard
    tight = plan_shards(choice, n, groups, budget, workers=2)
    assert len(tight.ranges) >= 4 and max(tight.task_peak_bytes, tight.merge_peak_bytes) <= budget
    assert len(plan_shards(choice, n, groups, budget, workers=2, shards=3).ranges) == 3  # as asked


@pytest.mark.parametrize(("start", "stop"), [(0, 2000), (0, 1), (299, 301), (1234, 2000), (1999, 2000)])
def test_a_row_range_reads_exactly_those_rows(tmp_path: Path, start: int, stop: int) -> None:
    snap, matrix = make_snapshot(tmp_path, 2000, 8, row_group_size=300)
    blocks = list(iter_vector_batches(snap.vectors_path, 128, start, stop))
    assert max(len(b) for b in blocks) <= 128
    assert np.array_equal(np.concatenate(blocks), matrix[start:stop])


def test_shard_tasks_add_their_rows_as_ids_and_their_exact_topk_merges_to_the_whole(tmp_path: Path) -> None:
    snap, matrix = make_snapshot(tmp_path, 2000, 16, row_group_size=700)
    trained = faiss.index_factory(16, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    with single_thread():
        trained.train(matrix[::2])
    queries = matrix[[3, 1500, 1999]]
    blob, path, shards = faiss.serialize_index(trained), str(snap.vectors_path), str(tmp_path / "shards")
    results = [add_shard(blob, path, a, b, 256, queries, faiss.METRIC_INNER_PRODUCT, shards)
               for a, b in [(0, 700), (700, 2000)]]
    whole = ExactTopK(queries, 11, faiss.METRIC_INNER_PRODUCT)
    whole.add(matrix)
    merged = ExactTopK(queries, 11, faiss.METRIC_INNER_PRODUCT)
    for result, (a, b) in zip(results, [(0, 700), (700, 2000)], strict=True):
        shard = faiss.read_index(result.path)
        ivf = faiss.extract_index_ivf(shard)
        ids = np.concatenate([faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i))
                              for i in range(ivf.nlist)])
        assert np.array_equal(np.sort(ids), np.arange(a, b)) and result.list_sizes.sum() == b - a
        merged.merge(result.exact_scores, result.exact_ids)
    assert np.array_equal(merged.ids, whole.ids) and merged.ids[:, 0].tolist() == [3, 1500, 1999]
