import json

import faiss
import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import ConfigError
from pipeline.filters import SearchFilter
from pipeline.index.score import single_thread
from pipeline.search import search_ids, search_vectors
from pipeline.store import normalize_rows


def _rows(n: int) -> pa.Table:
    paths = [f"{'en' if i % 3 else 'ru'}/doc{i % 50}.{'md' if i % 2 else 'txt'}" for i in range(n)]
    metas = [json.dumps({"lang": "en" if i % 3 else "ru", "tags": ["a", "b"] if i % 5 == 0 else ["c"],
                         "info": {"year": 2000 + i % 4}, "draft": i % 7 == 0}) for i in range(n)]
    return pa.table({
        "chunk_id": [f"c{i}" for i in range(n)], "doc_id": [f"d{i}" for i in range(n)], "source_path": paths,
        "doc_type": [p.rsplit(".", 1)[1] for p in paths], "chunk_index": [0] * n, "char_start": [0] * n,
        "char_end": [1] * n, "text": [f"text {i}" for i in range(n)], "metadata": metas,
    })


def test_parse_options() -> None:
    f = SearchFilter.parse(path="en/*", doc_type=".md", fields=["lang=en", " info.year = 2001 "])
    assert f == SearchFilter("en/*", "md", (("lang", "en"), ("info.year", "2001")))
    assert not SearchFilter.parse()
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        SearchFilter.parse(fields=["novalue"])


@pytest.mark.parametrize(("flt", "expected"), [
    (SearchFilter(path="ru/*"), lambda i: i % 3 == 0),
    (SearchFilter(path="*.md"), lambda i: i % 2 == 1),
    (SearchFilter(doc_type="txt"), lambda i: i % 2 == 0),
    (SearchFilter(fields=(("lang", "en"),)), lambda i: i % 3 != 0),
    (SearchFilter(fields=(("tags", "a"),)), lambda i: i % 5 == 0),  # a list matches when an element does
    (SearchFilter(fields=(("info.year", "200[12]"),)), lambda i: i % 4 in (1, 2)),  # nested key, glob value
    (SearchFilter(fields=(("draft", "true"),)), lambda i: i % 7 == 0),
    (SearchFilter(fields=(("missing", "*"),)), lambda i: False),
    (SearchFilter(path="en/*", doc_type="md", fields=(("lang", "en"),)), lambda i: i % 3 != 0 and i % 2 == 1),
])
def test_mask(flt: SearchFilter, expected) -> None:
    rows = _rows(200)
    assert flt.mask(rows).tolist() == [expected(i) for i in range(200)]


def _data(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim)).astype(np.float32)
    return normalize_rows(centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32))


@pytest.fixture(scope="module")
def indexes() -> tuple[np.ndarray, dict[str, faiss.Index]]:
    data = _data(4000)
    built = {}
    with single_thread():
        for factory, param in (("Flat", None), ("HNSW32,Flat", ("efSearch", 32)), ("IVF64,Flat", ("nprobe", 4)),
                               ("IVF64,SQ8", ("nprobe", 4))):
            index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
            index.train(data)
            index.add(data)
            if param:
                faiss.ParameterSpace().set_index_parameter(index, *param)
            built[factory] = index
    return data, built


def _exact_filtered(data: np.ndarray, query: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    ids = np.flatnonzero(allowed)
    scores = data[ids] @ query
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


@pytest.mark.parametrize("factory", ["Flat", "HNSW32,Flat", "IVF64,Flat", "IVF64,SQ8"])
@pytest.mark.parametrize("keep_every", [1000, 7, 2])  # 4 rows, ~570 rows, half of them
def test_filtered_search_returns_only_allowed_rows_and_finds_the_best(indexes, factory: str,
                                                                       keep_every: int) -> None:
    data, built = indexes
    allowed = np.zeros(len(data), dtype=bool)
    allowed[::keep_every] = True
    hit_rate = []
    for qi in range(0, 4000, 400):
        found = [i for i, _ in search_ids(built[factory], data[qi], 10, allowed)]
        assert found and all(allowed[i] for i in found)
        truth = _exact_filtered(data, data[qi], allowed, 10)
        assert len(found) == len(truth)  # a selective filter still fills k (or all that remain)
        hit_rate.append(len(set(found) & set(truth)) / len(truth))
    exact = factory in ("Flat", "IVF64,Flat") or (factory == "HNSW32,Flat" and keep_every > 2)  # few rows: exact
    assert np.mean(hit_rate) >= (0.99 if exact else 0.9)


def test_filter_that_allows_nothing(indexes) -> None:
    data, built = indexes
    assert search_ids(built["Flat"], data[0], 5, np.zeros(len(data), dtype=bool)) == []


def test_search_vectors_applies_the_mask_to_hits(indexes) -> None:
    data, built = indexes
    rows = _rows(len(data))
    mask = SearchFilter(path="ru/*").mask(rows)
    hits = search_vectors(built["IVF64,Flat"], rows, data[3], 5, allowed=mask)
    assert len(hits) == 5 and all(h.source_path.startswith("ru/") for h in hits)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].chunk_id == "c3" and hits[0].metadata["lang"] == "ru"
