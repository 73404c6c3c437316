"""Hybrid search: reciprocal rank fusion, and dense + BM25 lists fused into Hits."""

import faiss
import numpy as np
import pyarrow as pa
import pytest

from pipeline.index.bm25 import Bm25Index
from pipeline.search import RRF_K, hybrid_search, reciprocal_rank_fusion

TEXTS = [
    "Create a virtual environment with python -m venv, then activate it.",
    "Хлеб на закваске выпекают в горячей духовке.",
    "Black holes: gravity so strong that not even light escapes.",
    "",
    "The os.path.join function joins path components.",
    "Закваску кормят мукой и водой каждый день.",
]


def test_rrf_by_hand() -> None:
    fused = dict(reciprocal_rank_fusion([[10, 20, 30], [30, 10]]))
    assert fused[10] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 2))
    assert fused[30] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert fused[20] == pytest.approx(1 / (RRF_K + 2))
    assert [i for i, _ in reciprocal_rank_fusion([[10, 20, 30], [30, 10]])] == [10, 30, 20]


def test_rrf_ties_keep_first_seen_order_and_one_list_keeps_its_order() -> None:
    assert [i for i, _ in reciprocal_rank_fusion([[1, 2], [2, 1]])] == [1, 2]
    assert [i for i, _ in reciprocal_rank_fusion([[5, 4, 3]])] == [5, 4, 3]
    assert reciprocal_rank_fusion([[], []]) == []


def test_hybrid_fuses_a_keyword_only_match_into_the_dense_list() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(TEXTS), 8)).astype(np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    rows = pa.table({"chunk_id": [f"c{i}" for i in range(len(TEXTS))], "doc_id": [f"d{i}" for i in range(len(TEXTS))],
                     "source_path": ["x.txt"] * len(TEXTS), "chunk_index": [0] * len(TEXTS),
                     "char_start": [0] * len(TEXTS), "char_end": [1] * len(TEXTS), "text": TEXTS,
                     "metadata": ["{}"] * len(TEXTS)})
    bm25 = Bm25Index.build(TEXTS)
    query = vectors[2]  # dense: chunk 2 first; words: only chunk 4 has "join"
    hits = hybrid_search(index, rows, bm25, query, "join", 3)
    dense = index.search(query[None], len(TEXTS))[1][0].tolist()
    expected = reciprocal_rank_fusion([dense, [4]])[:3]
    assert [h.chunk_id for h in hits] == [f"c{i}" for i, _ in expected]
    assert hits[0].chunk_id in ("c2", "c4") and "c4" in [h.chunk_id for h in hits]
    assert hits[0].score == pytest.approx(expected[0][1])
    assert dense[0] == 2 and dense.index(4) > 0  # the dense list alone does not put c4 first
    only_ru = np.array([i in (1, 5) for i in range(len(TEXTS))])
    assert {h.chunk_id for h in hybrid_search(index, rows, bm25, query, "join", 3, allowed=only_ru)} <= {"c1", "c5"}
