"""The lexical index: tokenisation in Russian and English, scores, and its files beside the FAISS index."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.index.bm25 import Bm25Index, tokenize
from pipeline.index.files import load_bm25, save_bm25

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


def test_bm25_finds_words_in_either_language_and_saves(tmp_path: Path) -> None:
    index = Bm25Index.build(TEXTS)
    assert [i for i, _ in index.top("хлебом", 3)] == [1]
    assert index.top("virtual environments", 3)[0][0] == 0
    assert index.top("закваска", 3)[0][0] in (1, 5)
    assert index.top("the of and", 3) == []  # stop words only
    assert index.top("zzzunknown", 3) == []
    allowed = np.array([True, False, True, True, True, True])
    assert all(i != 1 for i, _ in index.top("хлеб закваска", 5, allowed))
    save_bm25(index, tmp_path)
    again = load_bm25(tmp_path)
    assert again.top("gravity light", 2) == index.top("gravity light", 2)


def test_empty_corpus_and_missing_index(tmp_path: Path) -> None:
    empty = Bm25Index.build([])
    save_bm25(empty, tmp_path)
    assert load_bm25(tmp_path).top("anything", 5) == []
    with pytest.raises(StoreError, match="pipeline index"):
        load_bm25(tmp_path / "nowhere")
