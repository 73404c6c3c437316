"""Images in a corpus: described by a vision model (the emulator's GigaChat-2-Pro), chunked, embedded, searchable
under the image's path; skipped and counted without one."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import api
from pipeline.config import load_config
from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.errors import ConfigError
from pipeline.images import image_describer
from pipeline.sources import SourceReport, iter_documents


def make_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\x00\x80\xff" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_jpeg(width: int, height: int) -> bytes:
    """A baseline JPEG header: enough for the emulator, which reads the size from the SOF0 marker."""
    return (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xc0\x00\x11\x08"
            + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "img").mkdir(parents=True)
    (root / "notes.txt").write_text("A black hole traps even light.", encoding="utf-8")
    (root / "img" / "diagram.png").write_bytes(make_png(7, 5))
    (root / "img" / "photo.JPG").write_bytes(make_jpeg(64, 32))
    (root / "img" / "scan.jpeg").write_bytes(make_jpeg(640, 480))
    (root / "doc.pdf").write_bytes(b"%PDF-1.4")
    return root


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with start_emulator(EmulatorProfile()) as running:
        yield running


def _env(tmp_path: Path, emu: Any | None = None, vision: str = "") -> dict[str, str]:
    env = {"HOME": str(tmp_path), "PIPELINE_CACHE_DIR": str(tmp_path / "cache"), "PIPELINE_VISION_MODEL": vision}
    if emu is not None:
        env |= {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
                "GIGACHAT_CREDENTIALS": emu.credentials}
    return env


def test_without_a_vision_model_images_are_skipped_and_counted(corpus: Path) -> None:
    report = SourceReport()
    docs = list(iter_documents(corpus, report))
    assert [d.doc_id for d in docs] == ["notes.txt"]
    assert report.skipped == {"image (no vision model)": 3, "unsupported type": 1}
    assert any("img/diagram.png: skipped (image (no vision model))" in w for w in report.warnings)


def test_images_are_described_embedded_and_searchable(corpus: Path, tmp_path: Path, emu: Any) -> None:
    config = load_config(None, _env(tmp_path, emu, "GigaChat-2-Pro"), model="e5-small-local", corpus=corpus,
                         out_dir=tmp_path / "out")
    chats_before = emu.stats()["by_path"].get("/api/v1/chat/completions", 0)
    uploads_before = emu.stats()["by_path"].get("/api/v1/files", 0)
    report = api.embed(config)
    assert report.documents == 4 and report.skipped == {"unsupported type": 1}
    stats = emu.stats()["by_path"]
    assert stats["/api/v1/chat/completions"] - chats_before == 3  # one image per message, one message each
    assert stats["/api/v1/files"] - uploads_before == 3

    hits = api.search(config, "PNG image of 7×5 pixels", k=4).hits
    image_hit = next(h for h in hits if h.source_path == "img/diagram.png")
    assert image_hit.metadata.get("image") is True and "7×5" in image_hit.text

    again = api.embed(config)  # descriptions come from the cache: no vision call, nothing re-embedded
    assert again.embedded == 0 and again.diff["unchanged"] == 4
    assert emu.stats()["by_path"]["/api/v1/chat/completions"] == stats["/api/v1/chat/completions"]


def test_chunk_command_path_describes_images_too(corpus: Path, tmp_path: Path, emu: Any) -> None:
    config = load_config(None, _env(tmp_path, emu, "GigaChat-2-Max"), model="e5-small-local")
    chunks = [c for c in api.chunk_corpus(config, corpus) if c.source_path.startswith("img/")]
    assert {c.source_path for c in chunks} == {"img/diagram.png", "img/photo.JPG", "img/scan.jpeg"}
    assert all(c.doc_type == "image" for c in chunks)


@pytest.mark.parametrize(("vision", "with_auth", "needle"), [
    ("GigaChat-2-Lite", True, "not a chat model that takes images"),
    ("Embeddings", True, "not a chat model that takes images"),
    ("GigaChat-2-Pro", False, "needs GigaChat credentials"),
])
def test_a_vision_model_must_be_one(tmp_path: Path, emu: Any, vision: str, with_auth: bool, needle: str) -> None:
    config = load_config(None, _env(tmp_path, emu if with_auth else None, vision))
    with pytest.raises(ConfigError, match=needle):
        image_describer(config)


def test_a_refused_image_is_skipped_not_fatal(corpus: Path, tmp_path: Path) -> None:
    (corpus / "img" / "diagram.png").unlink()
    (corpus / "img" / "scan.jpeg").unlink()
    with start_emulator(EmulatorProfile(blacklist_word="Describe")) as refusing:
        config = load_config(None, _env(tmp_path, refusing, "GigaChat-2-Pro"), model="e5-small-local")
        describer = image_describer(config)
        assert describer is not None
        report = SourceReport()
        try:
            docs = list(iter_documents(corpus, report, describer))
        finally:
            describer.close()
    assert [d.doc_id for d in docs] == ["notes.txt"]
    assert report.skipped["image not described"] == 1
    assert any("refused to describe it" in w for w in report.warnings)
