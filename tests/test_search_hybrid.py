from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import StoreError
from pipeline.hybrid import RRF_K, Bm25Index, load_bm25, reciprocal_rank_fusion, tokenize
from pipeline.search import hybrid_search

TEXTS = [
    "Create a virtual environment with python -m venv, then activate it.",
    "Хлеб на закваске выпекают в горячей духовке.",
    "Black holes: gravity so strong that not even light escapes.",
    "",
    "The os.path.join function joins path components.",
    "Закваску кормят мукой и водой каждый день.",
]


def test_tokenize_stems_russian_and_english_and_drops_stop_words() -> None:
    assert tokenize("The environments were created") == ["environ", "creat"]
    assert tokenize("Хлеба пекут в духовках") == ["хлеб", "пекут", "духовк"]
    assert tokenize("os.path.join sys_path") == ["os", "path", "join", "sys", "path"]
    assert tokenize("Ёжик ежик") == ["ежик", "ежик"]  # ё folds to е
    assert tokenize("Python 3.11") == ["python", "3", "11"]


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


def test_bm25_finds_words_in_either_language_and_saves(tmp_path: Path) -> None:
    index = Bm25Index.build(TEXTS)
    assert [i for i, _ in index.top("хлебом", 3)] == [1]
    assert index.top("virtual environments", 3)[0][0] == 0
    assert index.top("закваска", 3)[0][0] in (1, 5)
    assert index.top("the of and", 3) == []  # stop words only
    assert index.top("zzzunknown", 3) == []
    allowed = np.array([True, False, True, True, True, True])
    assert all(i != 1 for i, _ in index.top("хлеб закваска", 5, allowed))
    index.save(tmp_path / "bm25")
    again = load_bm25(tmp_path)
    assert again.top("gravity light", 2) == index.top("gravity light", 2)


def test_empty_corpus_and_missing_index(tmp_path: Path) -> None:
    empty = Bm25Index.build([])
    empty.save(tmp_path / "bm25")
    assert load_bm25(tmp_path).top("anything", 5) == []
    with pytest.raises(StoreError, match="pipeline index"):
        load_bm25(tmp_path / "nowhere")


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
