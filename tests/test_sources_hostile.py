"""Corpus walking against what a scheduled job meets in the wild: links out of the corpus, FIFOs, sockets,
unreadable files, names that are not UTF-8, pages without </head>, huge files and huge .jsonl lines."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ProviderError
from pipeline.sources import SourceReport, escape_name, iter_documents, unescape_name

CP1251_NAME = "Привет.txt".encode("cp1251")  # b'\xcf\xf0\xe8\xe2\xe5\xf2.txt': not UTF-8


def read(corpus: Path, **options: object) -> tuple[dict[str, str], SourceReport]:
    report = SourceReport()
    docs = {d.doc_id: d.text for d in iter_documents(corpus, report, **options)}  # type: ignore[arg-type]
    return docs, report


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """A corpus with a link to a file outside it, a link to a folder outside it, and a link inside it."""
    outside = tmp_path / "elsewhere"
    (outside / "sub").mkdir(parents=True)
    (outside / "creds.env").write_text("API_KEY=hunter2\n", encoding="utf-8")
    (outside / "sub" / "far.md").write_text("far away text", encoding="utf-8")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "real.txt").write_text("real text", encoding="utf-8")
    (corpus / "notes.txt").symlink_to(outside / "creds.env")
    (corpus / "outdir").symlink_to(outside / "sub", target_is_directory=True)
    (corpus / "alias.txt").symlink_to(corpus / "real.txt")
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)
    return corpus


def test_links_are_not_followed_by_default_and_each_is_counted(linked: Path) -> None:
    docs, report = read(linked)
    assert docs == {"real.txt": "real text"}
    assert report.skipped == {"symlink out of corpus": 2, "symlink": 2}
    assert any(w.startswith("notes.txt: skipped (symlink out of corpus: ") and "creds.env" in w
               for w in report.warnings)
    assert report.files == 5 and report.documents == 1


def test_follow_symlinks_reads_through_links_once_without_looping(linked: Path) -> None:
    docs, report = read(linked, follow_symlinks=True)
    assert docs == {"alias.txt": "real text", "notes.txt": "API_KEY=hunter2\n", "outdir/far.md": "far away text",
                    "real.txt": "real text"}
    assert report.skipped == {"symlink loop": 1}


def test_a_dangling_link_is_counted_when_following(tmp_path: Path) -> None:
    (tmp_path / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    assert read(tmp_path, follow_symlinks=True)[1].skipped == {"broken symlink": 1}
    assert read(tmp_path)[1].skipped == {"symlink": 1}


@pytest.mark.timeout(20)
def test_fifos_and_sockets_are_skipped_and_never_block(tmp_path: Path) -> None:
    corpus = Path(tempfile.mkdtemp(prefix="c", dir="/tmp"))  # short path: AF_UNIX names are limited to ~108 bytes
    try:
        (corpus / "a.txt").write_text("text", encoding="utf-8")
        os.mkfifo(corpus / "pipe.txt")  # reading this would wait for a writer forever
        os.mkfifo(corpus / "pipe.jsonl")
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(corpus / "sock.md"))
        try:
            docs, report = read(corpus)
        finally:
            server.close()
        assert docs == {"a.txt": "text"}
        assert report.skipped == {"special file": 3}
        assert "pipe.txt: skipped (special file: FIFO)" in report.warnings
        assert "sock.md: skipped (special file: socket)" in report.warnings
        # named on its own as the corpus, a FIFO is opened (non-blocking) and refused, not read
        docs, report = read(corpus / "pipe.txt")
        assert docs == {} and report.skipped == {"special file": 1}
    finally:
        for child in corpus.iterdir():
            child.unlink()
        corpus.rmdir()


def test_a_device_behind_a_followed_link_is_a_special_file(tmp_path: Path) -> None:
    (tmp_path / "null.txt").symlink_to("/dev/null")
    docs, report = read(tmp_path, follow_symlinks=True)
    assert docs == {} and report.skipped == {"special file": 1}
    assert report.warnings == ["null.txt: skipped (special file: device)"]


_UNREADABLE_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pipeline.sources import SourceReport, iter_documents
    report = SourceReport()
    docs = [d.doc_id for d in iter_documents(Path(sys.argv[1]), report, lambda p, r: "a picture")]
    print(json.dumps({"docs": docs, "skipped": dict(report.skipped), "warnings": report.warnings}))
""")


def test_unreadable_files_and_folders_are_skipped_and_counted() -> None:
    """Root reads everything, so as root the walk runs in a child without the capabilities that allow it."""
    command = [sys.executable, "-c", _UNREADABLE_CHILD]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: every file is readable")
        command = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *command]
    corpus = Path(tempfile.mkdtemp(prefix="unreadable-", dir="/tmp"))
    try:
        corpus.chmod(0o755)
        (corpus / "ok.txt").write_text("fine", encoding="utf-8")
        (corpus / "ok.txt").chmod(0o644)
        for name in ("secret.txt", "secret.jsonl", "secret.png"):
            (corpus / name).write_bytes(b"\x89PNG\r\n\x1a\n" if name.endswith(".png") else b"hidden text")
            (corpus / name).chmod(0o000)
        (corpus / "locked").mkdir(mode=0o000)
        result = subprocess.run(
            [*command, str(corpus)], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["docs"] == ["ok.txt"]
        assert out["skipped"] == {"unreadable": 4}
        assert "secret.txt: skipped (unreadable: Permission denied)" in out["warnings"]
    finally:
        (corpus / "locked").chmod(0o755)
        for child in corpus.iterdir():
            child.rmdir() if child.is_dir() else child.unlink()
        corpus.rmdir()


def test_names_that_are_not_utf8_are_kept_with_a_reversible_escape(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(os.path.join(os.fsencode(corpus), CP1251_NAME), "wb") as f:
        f.write("Текст в файле с именем в cp1251".encode())
    os.mkdir(os.path.join(os.fsencode(corpus), b"\xe4\xee\xea"))  # a folder too: "док" in cp1251
    with open(os.path.join(os.fsencode(corpus), b"\xe4\xee\xea", b"a.md"), "wb") as f:
        f.write(b"inside")
    docs, report = read(corpus)
    assert set(docs) == {r"\xcf\xf0\xe8\xe2\xe5\xf2.txt", r"\xe4\xee\xea/a.md"}
    assert not report.skipped
    for doc_id in docs:
        doc_id.encode("utf-8")  # strict: what pyarrow needs
        assert (corpus / os.fsdecode(unescape_name(doc_id))).is_file()


def test_control_characters_in_names_are_escaped_in_ids_and_warnings(tmp_path: Path) -> None:
    (tmp_path / "evil\x1b[31m\nname.txt").write_text("coloured", encoding="utf-8")
    (tmp_path / "empty\x07.md").write_text("  ", encoding="utf-8")
    (tmp_path / "back\\slash.txt").write_text("b", encoding="utf-8")
    docs, report = read(tmp_path)
    assert set(docs) == {r"evil\x1b[31m\x0aname.txt", "back\\\\slash.txt"}
    assert report.warnings == [r"empty\x07.md: skipped (empty)"]
    assert all(unescape_name(escape_name(n)) == os.fsencode(n) for n in os.listdir(tmp_path))


@pytest.mark.parametrize("name", ["plain.txt", "Привет.md", "a\\b", "\\x41", "tab\there", "\u202eexe.txt",
                                  os.fsdecode(CP1251_NAME), "x\x85y", "%41"])
def test_escape_name_is_reversible_and_leaves_ordinary_names_alone(name: str) -> None:
    escaped = escape_name(name)
    assert unescape_name(escaped) == os.fsencode(name)
    assert escaped.isprintable() and escaped.encode("utf-8")
    if name in ("plain.txt", "Привет.md", "%41"):
        assert escaped == name


def test_escaped_names_reach_the_parquet_vectors(tmp_path: Path, linked: Path) -> None:
    """Before: `UnicodeEncodeError: surrogates not allowed` from pyarrow, and the link's target was indexed."""
    with open(os.path.join(os.fsencode(linked), CP1251_NAME), "wb") as f:
        f.write("Московский метрополитен открылся в 1935 году.".encode())
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pipeline", "embed", str(linked), "--out", str(out),
                             "--no-progress", "--no-index", "--json"],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["documents"] == 2 and report["skipped"] == {"symlink out of corpus": 2, "symlink": 2}
    import pyarrow.parquet as pq

    paths = set()
    for file in out.rglob("*.parquet"):
        table = pq.read_table(file)
        if "source_path" in table.column_names:
            paths |= set(table.column("source_path").to_pylist())
    assert paths == {"real.txt", r"\xcf\xf0\xe8\xe2\xe5\xf2.txt"}


def test_html_without_head_end_keeps_its_body(tmp_path: Path) -> None:
    (tmp_path / "page.html").write_text(
        "<html><head><title>Заголовок</title><meta charset=utf-8><style>p{}</style>"
        "<body><p>Видимый текст страницы.</p></body></html>", encoding="utf-8")
    (tmp_path / "bare.html").write_text("<title>T</title><p>Body only", encoding="utf-8")
    report = SourceReport()
    docs = {d.doc_id: d for d in iter_documents(tmp_path, report)}
    assert docs["page.html"].text == "Видимый текст страницы."
    assert docs["page.html"].metadata == {"title": "Заголовок"}
    assert docs["bare.html"].text == "Body only"
    assert not report.skipped


@pytest.mark.timeout(20)
def test_a_huge_file_is_skipped_before_it_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "one-line.txt"
    with huge.open("wb") as f:  # 100 MB on one line, sparse, so the test writes almost nothing
        f.write(b"word ")
        f.truncate(100 * 1024 * 1024)
    (tmp_path / "small.txt").write_text("small", encoding="utf-8")
    tracemalloc.start()
    try:
        docs, report = read(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert docs == {"small.txt": "small"}
    assert report.skipped == {"too large": 1}
    assert report.warnings == [f"one-line.txt: skipped (too large: {100 * 1024 * 1024} bytes > {16 * 1024 * 1024})"]
    assert peak < 2 * 1024 * 1024
    docs, report = read(tmp_path, max_file_bytes=4)  # the limit is a setting
    assert docs == {} and report.skipped == {"too large": 2}


def test_a_huge_jsonl_line_is_skipped_without_holding_it_and_the_next_line_counts(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    body = "x" * (10 * 1024 * 1024)
    path.write_text(json.dumps({"id": "big", "text": body}) + "\n" + json.dumps({"id": "small", "text": "ok"}) + "\n",
                    encoding="utf-8")
    tracemalloc.start()
    try:
        docs, report = read(path, max_file_bytes=1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert docs == {"big.jsonl#small": "ok"}
    assert report.warnings == [f"big.jsonl:1: skipped (too large: line over {1024 * 1024} bytes)"]
    assert peak < 3 * 1024 * 1024  # pieces of the line, never the 10 MB of it
    docs, report = read(path)  # within the default limit a 10 MB record is just a record
    assert len(docs["big.jsonl#big"]) == len(body) and not report.skipped


def test_images_that_cannot_be_read_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_bytes(b"<html>not a png</html>")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "real.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (tmp_path / "vanishing.jpeg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    described: list[str] = []

    def describe(path: Path, rel: str) -> str:
        described.append(rel)
        if rel == "vanishing.jpeg":
            raise FileNotFoundError(2, "No such file or directory")
        if rel == "real.png":
            raise ProviderError("422 Unsupported file format", provider="gigachat", status=422)
        return "never"

    report = SourceReport()
    assert list(iter_documents(tmp_path, report, describe)) == []
    assert described == ["real.png", "vanishing.jpeg"]  # the describer never sees the fakes
    assert report.skipped == {"invalid image": 2, "image not described": 1, "unreadable": 1}
    assert "fake.png: skipped (invalid image: not a PNG file)" in report.warnings


def test_the_cli_skips_links_out_of_the_corpus_unless_asked(linked: Path) -> None:
    def chunked(*extra: str) -> str:
        result = subprocess.run([sys.executable, "-m", "pipeline", "chunk", str(linked), "--json", *extra],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "hunter2" not in chunked()
    assert "hunter2" in chunked("--follow-symlinks")


_NAME_BYTES = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..") and not b.startswith(b"."))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_NAME_BYTES)
def test_any_file_name_is_read_once_and_kept_reversibly(raw: bytes) -> None:
    """Any bytes a file name can hold: one document, an id that is valid UTF-8 (Parquet can store it), and
    the escape gives back the exact bytes."""
    import pyarrow as pa

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        name = raw + b".txt"
        with open(os.path.join(os.fsencode(corpus), name), "wb") as f:
            f.write(b"some text")
        docs, report = read(corpus)
    assert list(docs.values()) == ["some text"], report.warnings
    (doc_id,) = docs
    pa.array([doc_id], pa.string())  # no surrogates: this is what failed before
    assert doc_id.encode("utf-8").decode("utf-8") == doc_id
    assert unescape_name(doc_id) == name
    assert not any(unicodedata.category(ch) == "Cc" for ch in doc_id)  # no control characters reach logs
