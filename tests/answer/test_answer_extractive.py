import numpy as np

from pipeline.answer.extractive import check_citations, extractive_answer, split_sentences
from pipeline.records import Hit


def test_split_sentences_english_russian_and_lists() -> None:
    text = "Первое предложение. Второе — с «кавычками»! Third one? Yes.\n\n# Heading\n- item one\n- item two"
    pieces = [text[a:b] for a, b in split_sentences(text)]
    assert pieces == ["Первое предложение.", "Второе — с «кавычками»!", "Third one?", "Yes.", "# Heading",
                      "- item one", "- item two"]


def test_check_citations_flags_unknown_numbers() -> None:
    assert check_citations("A [1]. B [3][2]. C [7].", 3) == ([1, 2, 3], [7])
    assert check_citations("no citations", 3) == ([], [])


def _hit(rank: int, text: str) -> Hit:
    return Hit(rank=rank, score=1.0 - rank / 10, chunk_id=f"d{rank}:0", doc_id=f"d{rank}", source_path=f"d{rank}.md",
               chunk_index=0, char_start=0, char_end=len(text), text=text)


def test_extractive_answer_cites_the_sources_of_its_sentences() -> None:
    vocab = ["bread", "oven", "star", "gravity", "coffee"]

    def embed(texts: list[str]) -> np.ndarray:
        m = np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=np.float32) + 1e-3
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    hits = [_hit(1, "Bake bread in a hot oven. Coffee is unrelated."), _hit(2, "A star collapses under gravity.")]
    query = embed(["bread oven"])[0]
    answer = extractive_answer("how to bake bread", query, hits, embed, max_sentences=1)
    assert answer.text == "Bake bread in a hot oven. [1]"
    assert answer.cited == [1] and answer.grounded and not answer.unknown_citations
    assert [s.source_path for s in answer.sources] == ["d1.md", "d2.md"]


def test_no_hits_is_an_ungrounded_answer() -> None:
    answer = extractive_answer("q", np.zeros(3, np.float32), [], lambda t: np.zeros((len(t), 3), np.float32))
    assert not answer.grounded and answer.sources == []
