from pathlib import Path

import pytest

from pipeline.errors import SourceError
from pipeline.sources import SourceReport, html_to_text, iter_documents, text_hash


def test_reads_every_format_and_counts_bad_files(tiny_corpus: Path) -> None:
    report = SourceReport()
    docs = {d.doc_id: d for d in iter_documents(tiny_corpus, report)}
    assert set(docs) == {"en/python.md", "en/space.txt", "ru/hleb.md", "ru/metro.html", "faq.jsonl#coffee-1"}
    assert report.skipped == {"binary": 1, "invalid UTF-8": 1, "empty": 1}
    assert report.files == 8 and report.documents == 5
    assert docs["faq.jsonl#coffee-1"].metadata == {"lang": "en", "topic": "coffee"}
    assert docs["faq.jsonl#coffee-1"].source_path == "faq.jsonl"
    assert docs["en/space.txt"].content_hash == text_hash(docs["en/space.txt"].text)


def test_html_keeps_text_drops_tags_scripts_and_styles(tiny_corpus: Path) -> None:
    doc = next(d for d in iter_documents(tiny_corpus) if d.doc_type == "html")
    assert "«Комсомольская»" in doc.text
    assert "<p>" not in doc.text and "color:red" not in doc.text and "не текст" not in doc.text
    assert doc.metadata["title"] == "Метро"
    assert "# Московское метро\n\nМосковский" in doc.text


def test_html_blocks_become_paragraphs() -> None:
    text, title = html_to_text("<title>T</title><h2>Head</h2><p>One <b>bold</b> line.</p><ul><li>a</li><li>b</li></ul>")
    assert title == "T"
    assert text == "## Head\n\nOne bold line.\n\na\nb"


def test_ids_are_stable_relative_paths_in_sorted_order(tiny_corpus: Path) -> None:
    first = [d.doc_id for d in iter_documents(tiny_corpus)]
    assert first == [d.doc_id for d in iter_documents(tiny_corpus)]
    assert first == sorted(first, key=lambda x: x.split("#")[0])


def test_jsonl_bad_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1, "text": "ok"}\nnot json\n{"id": 2}\n{"id": 1, "text": "dup"}\n\n{"text": "no id"}\n',
                    encoding="utf-8")
    report = SourceReport()
    docs = list(iter_documents(path, report))
    assert [d.doc_id for d in docs] == ["r.jsonl#1", "r.jsonl#6"]
    assert report.skipped == {"invalid JSON": 1, "record without text": 1, "duplicate record id": 1}



def test_jsonl_is_read_a_line_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [b'\xef\xbb\xbf{"id": "a", "text": "first"}\r\n',  # a BOM and CRLF line ends
             '{"id": "b", "text": "one\u2028two"}\n'.encode(),  # U+2028 inside a string is not a line end
             b'{"id": "c", "text": "caf\xe9"}\n',  # Latin-1, not UTF-8: this record only is skipped
             b'{"id": "d", "text": "last"}\n']
    path.write_bytes(b"".join(lines))
    report = SourceReport()
    docs = iter_documents(path, report)
    first = next(docs)
    assert first.doc_id == "r.jsonl#a" and first.text == "first"
    assert not report.skipped  # the bad line 3 has not been read yet
    rest = list(docs)
    assert [d.doc_id for d in rest] == ["r.jsonl#b", "r.jsonl#d"]
    assert rest[0].text == "one\u2028two"
    assert report.skipped == {"invalid UTF-8": 1}
    assert report.warnings == ["r.jsonl:3: skipped (invalid UTF-8: byte 24)"]


def test_jsonl_of_blank_lines_is_empty(tmp_path: Path) -> None:
    (tmp_path / "blank.jsonl").write_text("\n  \n\n", encoding="utf-8")
    report = SourceReport()
    assert list(iter_documents(tmp_path, report)) == []
    assert report.skipped == {"empty": 1}

def test_single_file_corpus_and_unsupported_types(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "b.pdf").write_bytes(b"%PDF")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.txt").write_text("hidden", encoding="utf-8")
    assert [d.doc_id for d in iter_documents(tmp_path / "a.txt")] == ["a.txt"]
    report = SourceReport()
    assert [d.doc_id for d in iter_documents(tmp_path, report)] == ["a.txt"]
    assert report.skipped == {"unsupported type": 1}


def test_missing_corpus_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="does not exist"):
        list(iter_documents(Path("/no/such/corpus")))
