"""Sources: turn a corpus path (folder or files) into a stream of Documents.

Reads .txt, .md, .html and .jsonl, and images through an injected describer; bad files are warned about
and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson

from .errors import AuthError, ProviderError, SourceError
from .records import Document

__all__ = ["IMAGE_SUFFIXES", "ImageDescriber", "SourceReport", "TEXT_SUFFIXES", "html_to_text", "iter_documents",
           "text_hash"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
ImageDescriber = Callable[[Path, str], str]  # (image path, path relative to the corpus) -> description

log = logging.getLogger("pipeline.sources")

TEXT_SUFFIXES = {".txt": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
                 ".jsonl": "jsonl"}
_SNIFF_BYTES = 8192


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class SourceReport:
    """What reading the corpus found: files seen, documents produced, and why anything was skipped."""

    files: int = 0
    documents: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def skip(self, path: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        message = f"{path}: skipped ({reason}{': ' + detail if detail else ''})"
        self.warnings.append(message)
        log.warning(message)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


_BLOCK_TAGS = {"p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "h1", "h2",
               "h3", "h4", "h5", "h6", "ul", "ol", "li", "table", "tr", "pre", "blockquote", "br", "hr",
               "title", "dl", "dt", "dd", "figure", "figcaption", "td", "th"}
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head"}


class _TextExtractor(HTMLParser):
    """Collects visible text; block elements become paragraph breaks so the chunker sees structure."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self._skip_depth += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n" if tag in ("li", "br") else "\n\n")
            if tag.startswith("h") and len(tag) == 2 and tag[1].isdigit():
                self.parts.append("#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS and self._skip_depth:
            self._skip_depth -= 1
        if tag in _BLOCK_TAGS and tag not in ("li", "br"):
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page, paragraphs separated by blank lines, and its <title>."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return "\n\n".join(paragraphs), " ".join("".join(parser.title).split())


def _decode(path: Path, rel: str, report: SourceReport) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError as e:
        report.skip(rel, "unreadable", e.strerror or str(e))
        return None
    if not raw.strip():
        report.skip(rel, "empty")
        return None
    if b"\x00" in raw[:_SNIFF_BYTES]:
        report.skip(rel, "binary")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        report.skip(rel, "invalid UTF-8", f"byte {e.start}")
        return None
    return text.removeprefix("\ufeff")


def _file_documents(path: Path, rel: str, kind: str, report: SourceReport) -> Iterator[Document]:
    if kind == "jsonl":
        yield from _jsonl_documents(path, rel, report)
        return
    text = _decode(path, rel, report)
    if text is None:
        return
    metadata: dict[str, Any] = {}
    if kind == "html":
        text, title = html_to_text(text)
        if title:
            metadata["title"] = title
    if not text.strip():
        report.skip(rel, "empty", "no text")
        return
    yield Document(doc_id=rel, source_path=rel, text=text, content_hash=text_hash(text), doc_type=kind,
                   metadata=metadata)


def _jsonl_documents(path: Path, rel: str, report: SourceReport) -> Iterator[Document]:
    """Records of a .jsonl file, read a line at a time: the first one is out before the file is read.

    Lines split on \n only (U+2028 is legal inside a JSON string). A bad line (not UTF-8, not JSON, no
    text, a repeated id) is skipped and reported as FILE:LINE; the rest of the file still counts.
    """
    try:
        f = path.open("rb")
    except OSError as e:
        report.skip(rel, "unreadable", e.strerror or str(e))
        return
    with f:
        if b"\x00" in f.read(_SNIFF_BYTES):
            report.skip(rel, "binary")
            return
        f.seek(0)
        seen: set[str] = set()
        blank = True
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            blank = False
            where = f"{rel}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.skip(where, "invalid UTF-8", f"byte {e.start}")
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                report.skip(where, "invalid JSON", str(e).split(":")[0])
                continue
            body = record.get("text") if isinstance(record, dict) else None
            if not isinstance(body, str) or not body.strip():
                report.skip(where, "record without text")
                continue
            record_id = str(record.get("id", lineno))
            if record_id in seen:
                report.skip(where, "duplicate record id", record_id)
                continue
            seen.add(record_id)
            metadata = record.get("metadata") or {}
            if not isinstance(metadata, dict):
                metadata = {"metadata": metadata}
            yield Document(doc_id=f"{rel}#{record_id}", source_path=rel, text=body, content_hash=text_hash(body),
                           doc_type="jsonl", metadata=metadata)
        if blank:
            report.skip(rel, "empty")


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel_parts):
            continue  # .git, .venv, editor files
        if path.is_file():
            yield path


def _image_document(path: Path, rel: str, describe: ImageDescriber | None, report: SourceReport) -> Document | None:
    """An image as the Document of its description (doc_type "image"); skipped and counted without a describer."""
    if describe is None:
        report.skip(rel, "image (no vision model)")
        return None
    try:
        text = describe(path, rel)
    except AuthError:
        raise  # every image would fail the same way: stop, as embedding would
    except ProviderError as e:
        report.skip(rel, "image not described", str(e))
        return None
    if not text.strip():
        report.skip(rel, "image not described", "empty description")
        return None
    return Document(doc_id=rel, source_path=rel, text=text, content_hash=text_hash(text), doc_type="image",
                    metadata={"image": True})


def iter_documents(corpus: Path, report: SourceReport | None = None,
                   describe_image: ImageDescriber | None = None) -> Iterator[Document]:
    """Documents of a corpus folder or single file, in a stable (sorted) order.

    Images (.png, .jpg, .jpeg) become the text `describe_image(path, rel)` returns; without a describer
    they are skipped and counted. Raises SourceError when the corpus path itself does not exist.
    """
    report = report if report is not None else SourceReport()
    if not corpus.exists():
        raise SourceError(f"{corpus}: corpus path does not exist")
    root = corpus if corpus.is_dir() else corpus.parent
    files = _walk(corpus) if corpus.is_dir() else iter([corpus])
    for path in files:
        report.files += 1
        rel = path.relative_to(root).as_posix()
        kind = TEXT_SUFFIXES.get(path.suffix.lower())
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = _image_document(path, rel, describe_image, report)
            if image is not None:
                report.documents += 1
                yield image
            continue
        if kind is None:
            report.skip(rel, "unsupported type", path.suffix or "no extension")
            continue
        for doc in _file_documents(path, rel, kind, report):
            report.documents += 1
            yield doc
