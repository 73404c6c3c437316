"""Sources: turn a corpus path (folder or files) into a stream of Documents.

Reads .txt, .md, .html and .jsonl, and images through an injected describer; bad files are warned about
and counted, never fatal.

Walking rules (what a scheduled job meets in the wild):
- symbolic links are not followed unless `follow_symlinks` is set: a link whose target lies outside the
  corpus is skipped as "symlink out of corpus", one that stays inside as "symlink" (its target is read under
  its own name anyway). With `follow_symlinks`, links are followed wherever they point, each directory
  entered at most once (no loops); a dangling link is skipped as "broken symlink".
- only regular files are opened; FIFOs, sockets and devices are skipped as "special file" and never opened
  for reading (opens are non-blocking, and checked again with fstat, so a FIFO cannot hang the run).
- a text file (or one .jsonl line, or an image) over `max_file_bytes` is skipped as "too large" before it
  is read; a .jsonl file as a whole has no limit, it is streamed a line at a time.
- names that are not valid UTF-8, and control characters in names, are kept with a reversible escape
  (see escape_name): `\\xNN` per such byte, `\\\\` for a backslash; so every source_path and doc_id is
  printable UTF-8 (Parquet needs valid UTF-8) and still names its file (unescape_name gives its bytes back).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .errors import AuthError, ProviderError, SourceError
from .records import Document

__all__ = ["DEFAULT_MAX_FILE_BYTES", "IMAGE_SUFFIXES", "FileStamp", "ImageDescriber", "KnownFile", "SourceReport",
           "TEXT_SUFFIXES",
           "Heading", "escape_name", "html_document", "html_to_text", "iter_documents", "markdown_headings",
           "read_file", "text_hash", "unescape_name", "walk_corpus"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
ImageDescriber = Callable[[Path, str], str]  # (image path, path relative to the corpus) -> description

log = logging.getLogger("pipeline.sources")

TEXT_SUFFIXES = {".txt": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
                 ".jsonl": "jsonl"}
_SNIFF_BYTES = 8192
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024  # one text file, one .jsonl line, one image; [sources] max_file_size
_IMAGE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",)}
_BIDI_CONTROLS = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C])


def escape_name(name: str) -> str:
    """A file name (or corpus-relative path) as printable, valid UTF-8, reversibly.

    A byte that is not UTF-8 (the surrogate os.fsdecode makes of it) and every byte of a control character
    (C0, DEL, C1, bidirectional overrides) becomes `\\xNN`; a backslash becomes `\\\\`. Any other name is
    returned unchanged, so the ids of ordinary files do not move.
    """
    if name.isascii() and name.isprintable() and "\\" not in name:
        return name
    out: list[str] = []
    for ch in name:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte itself
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0 or code in _BIDI_CONTROLS or 0xD800 <= code <= 0xDFFF:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
        else:
            out.append(ch)
    return "".join(out)


_ESCAPE = re.compile(r"\\\\|\\x([0-9a-f]{2})")


def unescape_name(escaped: str) -> bytes:
    """The bytes of the name escape_name was given (os.fsencode of it): the inverse of escape_name."""
    parts: list[bytes] = []
    pos = 0
    for m in _ESCAPE.finditer(escaped):
        parts.append(escaped[pos:m.start()].encode("utf-8", "surrogateescape"))
        parts.append(bytes([int(m.group(1), 16)]) if m.group(1) else b"\\")
        pos = m.end()
    parts.append(escaped[pos:].encode("utf-8", "surrogateescape"))
    return b"".join(parts)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


FileStamp = tuple[int, int]  # (size in bytes, mtime in ns): a file the file system says is unchanged
# A source file the previous run read whole: its stamp then, and the (doc_id, content_hash) it gave.
KnownFile = tuple[FileStamp, list[tuple[str, str]]]


@dataclass
class SourceReport:
    """What reading the corpus found: files seen, documents produced, and why anything was skipped."""

    files: int = 0
    documents: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    stamps: dict[str, FileStamp] = field(default_factory=dict)  # source path -> (size, mtime_ns) as read
    unread: int = 0  # files whose stamp matched the previous run's: their documents were not read again

    def skip(self, path: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        detail = escape_name(detail) if detail else ""  # a record id or an error text: no control characters
        message = f"{path}: skipped ({reason}{': ' + detail if detail else ''})"
        self.warnings.append(message)
        log.warning(message)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: SourceReport) -> None:
        """Count in what another reader found (a Ray task's part of the corpus); its warnings are logged here."""
        self.files += other.files
        self.documents += other.documents
        self.unread += other.unread
        self.skipped.update(other.skipped)
        self.stamps.update(other.stamps)
        self.warnings.extend(other.warnings)
        for message in other.warnings:
            log.warning(message)


_BLOCK_TAGS = {"p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "h1", "h2",
               "h3", "h4", "h5", "h6", "ul", "ol", "li", "table", "tr", "pre", "blockquote", "br", "hr",
               "title", "dl", "dt", "dd", "figure", "figcaption", "td", "th"}
# Not "head": a page without </head> would lose its whole body; head's content is <title> (kept apart) and
# tags with no text, or <style>/<script> (skipped anyway).
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg"}


class _TextExtractor(HTMLParser):
    """Collects visible text; block elements become paragraph breaks so the chunker sees structure.

    A heading h1-h6 becomes a Markdown ATX line ("## text"), led by `mark` so its place in the final text
    can be found; its level goes to `levels`.
    """

    def __init__(self, mark: str = "") -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.levels: list[int] = []
        self._mark = mark
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
                self.parts.append(self._mark + "#" * int(tag[1]) + " ")
                self.levels.append(int(tag[1]))

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


Heading = tuple[int, int, str]  # (offset of its line in the text, level 1-6, its text): see Document.headings
_HEADING_MARK = "\ufdd0"  # a noncharacter: marks where html headings start; a page holding one gets no marks


def html_to_text(html: str) -> tuple[str, str]:
    """Visible text of an HTML page, paragraphs separated by blank lines, and its <title>."""
    text, title, _ = html_document(html)
    return text, title


def html_document(html: str) -> tuple[str, str, tuple[Heading, ...]]:
    """html_to_text, plus where its h1-h6 headings (rendered as "## text" lines) start in the text."""
    mark = "" if _HEADING_MARK in html else _HEADING_MARK
    parser = _TextExtractor(mark)
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
    text = "\n\n".join(paragraphs)
    title = " ".join("".join(parser.title).split())
    if not mark:
        return text, title, ()
    headings: list[Heading] = []
    found = text.find(mark)
    for k, level in enumerate(parser.levels):
        if found < 0:
            break
        end = text.find("\n", found)
        words = text[found + 1 + level : end if end >= 0 else len(text)].strip()
        if words:
            headings.append((found - k, level, words))  # the k marks before it are removed
        found = text.find(mark, found + 1)
    return text.replace(mark, ""), title, tuple(headings)


_ATX_OR_FENCE = re.compile(r"^ {0,3}(?:(#{1,6})(?:[ \t]+([^\n]*))?|(`{3,}|~{3,})[^\n]*)$", re.MULTILINE)
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")


def markdown_headings(text: str) -> tuple[Heading, ...]:
    """The ATX headings ("#".."######") of Markdown text, outside fenced code blocks (where "# " is a comment)."""
    headings: list[Heading] = []
    fence = ""
    for m in _ATX_OR_FENCE.finditer(text):
        if m.group(3) is not None:
            run = m.group(3)
            if not fence:
                fence = run
            elif run[0] == fence[0] and len(run) >= len(fence) and not m.group(0).strip().strip(run[0]):
                fence = ""
            continue
        if fence:
            continue
        words = " ".join(_CLOSING_HASHES.sub("", (m.group(2) or "").strip()).split())
        if words:
            headings.append((m.start(), len(m.group(1)), words))
    return tuple(headings)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "not a regular file"


def _open_regular(path: Path, rel: str, report: SourceReport, *, follow: bool,
                  max_bytes: int | None) -> BinaryIO | None:
    """The file opened for reading if it is a regular file within max_bytes; else skipped, counted, None.

    Non-blocking, so a FIFO that appeared after the walk looked cannot hang the open; without `follow`,
    a link that appeared since the walk is refused (O_NOFOLLOW) rather than read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            report.skip(rel, "symlink")
        else:
            report.skip(rel, "unreadable", e.strerror or str(e))
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            report.skip(rel, "special file", _special_kind(st.st_mode))
            os.close(fd)
            return None
        if max_bytes is not None and st.st_size > max_bytes:
            report.skip(rel, "too large", f"{st.st_size} bytes > {max_bytes}")
            os.close(fd)
            return None
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as e:
        os.close(fd)
        report.skip(rel, "unreadable", e.strerror or str(e))
        return None


def _read_bounded(f: BinaryIO, max_bytes: int) -> bytes:
    """The file's bytes, at most max_bytes + 1 of them (so a file that grew after fstat is still caught),
    read in pieces: one read(max_bytes + 1) would allocate the whole limit for every small file."""
    pieces: list[bytes] = []
    total = 0
    while total <= max_bytes:
        piece = f.read(min(1 << 20, max_bytes + 1 - total))
        if not piece:
            break
        pieces.append(piece)
        total += len(piece)
    return b"".join(pieces)


def _decode(path: Path, rel: str, report: SourceReport, *, follow: bool, max_bytes: int) -> str | None:
    f = _open_regular(path, rel, report, follow=follow, max_bytes=max_bytes)
    if f is None:
        return None
    try:
        with f:
            raw = _read_bounded(f, max_bytes)
    except OSError as e:
        report.skip(rel, "unreadable", e.strerror or str(e))
        return None
    if len(raw) > max_bytes:
        report.skip(rel, "too large", f"over {max_bytes} bytes")
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


def _file_documents(path: Path, rel: str, kind: str, report: SourceReport, *, follow: bool,
                    max_bytes: int) -> Iterator[Document]:
    if kind == "jsonl":
        yield from _jsonl_documents(path, rel, report, follow=follow, max_bytes=max_bytes)
        return
    text = _decode(path, rel, report, follow=follow, max_bytes=max_bytes)
    if text is None:
        return
    metadata: dict[str, Any] = {}
    headings: tuple[Heading, ...] = ()
    if kind == "html":
        text, title, headings = html_document(text)
        if title:
            metadata["title"] = title
    elif kind == "md":
        headings = markdown_headings(text)
    if not text.strip():
        report.skip(rel, "empty", "no text")
        return
    yield Document(doc_id=rel, source_path=rel, text=text, content_hash=text_hash(text), doc_type=kind,
                   metadata=metadata, headings=headings)


def _lines(f: BinaryIO, max_bytes: int) -> Iterator[bytes | None]:
    """The lines of a file, each read with at most max_bytes + 1 bytes in memory; None for a longer one
    (whose rest is read past in pieces, never held whole)."""
    while True:
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while True:
                rest = f.readline(1 << 16)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield raw


def _jsonl_documents(path: Path, rel: str, report: SourceReport, *, follow: bool,
                     max_bytes: int) -> Iterator[Document]:
    """Records of a .jsonl file, read a line at a time: the first one is out before the file is read.

    Lines split on \n only (U+2028 is legal inside a JSON string). A bad line (not UTF-8, not JSON, no
    text, a repeated id, longer than max_bytes) is skipped and reported as FILE:LINE; the rest of the file
    still counts.
    """
    f = _open_regular(path, rel, report, follow=follow, max_bytes=None)
    if f is None:
        return
    with f:
        try:
            head = f.read(_SNIFF_BYTES)
            f.seek(0)
        except OSError as e:
            report.skip(rel, "unreadable", e.strerror or str(e))
            return
        if b"\x00" in head:
            report.skip(rel, "binary")
            return
        seen: set[str] = set()
        blank = True
        for lineno, raw in enumerate(_lines(f, max_bytes), 1):
            where = f"{rel}:{lineno}"
            if raw is None:
                blank = False
                report.skip(where, "too large", f"line over {max_bytes} bytes")
                continue
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            blank = False
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
            title = record.get("title")
            if isinstance(title, str) and title.strip() and "title" not in metadata:
                metadata = {**metadata, "title": " ".join(title.split())}  # a BEIR record's title field
            yield Document(doc_id=f"{rel}#{record_id}", source_path=rel, text=body, content_hash=text_hash(body),
                           doc_type="jsonl", metadata=metadata)
        if blank:
            report.skip(rel, "empty")


def _inside(target: str, root: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _walk(root: Path, report: SourceReport, follow: bool) -> Iterator[tuple[Path, str]]:
    """(path, escaped corpus-relative path) of the files to read, in sorted order; links, special files and
    unreadable folders are skipped and counted here (each as one file seen)."""
    real_root = os.path.realpath(root)
    entered: set[tuple[int, int]] = set()  # (device, inode) of every folder walked, against link loops

    def seen_and_skipped(rel: str, reason: str, detail: str = "") -> None:
        report.files += 1
        report.skip(rel, reason, detail)

    def walk(folder: Path, prefix: str) -> Iterator[tuple[Path, str]]:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in entered:
                seen_and_skipped(prefix.rstrip("/") or ".", "symlink loop")
                return
            entered.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            seen_and_skipped(prefix.rstrip("/") or ".", "unreadable", e.strerror or str(e))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .git, .venv, editor files
            path = folder / entry.name
            rel = prefix + escape_name(entry.name)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as e:
                seen_and_skipped(rel, "unreadable", e.strerror or str(e))
                continue
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if not follow:
                    if _inside(target, real_root):
                        seen_and_skipped(rel, "symlink")
                    else:
                        seen_and_skipped(rel, "symlink out of corpus", escape_name(os.readlink(path)))
                    continue
                try:
                    mode = os.stat(path).st_mode
                except OSError as e:
                    seen_and_skipped(rel, "broken symlink", e.strerror or str(e))
                    continue
            if stat.S_ISDIR(mode):
                yield from walk(path, rel + "/")
            elif stat.S_ISREG(mode):
                yield path, rel
            else:
                seen_and_skipped(rel, "special file", _special_kind(mode))

    yield from walk(root, "")


def _stamp(path: Path, follow: bool) -> FileStamp | None:
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None  # reading it will say why, and skip it
    return (st.st_size, st.st_mtime_ns)


def _image_document(path: Path, rel: str, describe: ImageDescriber | None, report: SourceReport, *,
                    follow: bool, max_bytes: int) -> Document | None:
    """An image as the Document of its description (doc_type "image"); skipped and counted without a describer,
    when it cannot be read, or when its first bytes are not those of its format."""
    if describe is None:
        report.skip(rel, "image (no vision model)")
        return None
    f = _open_regular(path, rel, report, follow=follow, max_bytes=max_bytes)
    if f is None:
        return None
    try:
        with f:
            head = f.read(16)
    except OSError as e:
        report.skip(rel, "unreadable", e.strerror or str(e))
        return None
    if not head.startswith(_IMAGE_MAGIC[path.suffix.lower()]):
        report.skip(rel, "invalid image", f"not a {path.suffix.lower().lstrip('.').upper()} file")
        return None
    try:
        text = describe(path, rel)
    except AuthError:
        raise  # every image would fail the same way: stop, as embedding would
    except ProviderError as e:
        report.skip(rel, "image not described", str(e))
        return None
    except OSError as e:
        report.skip(rel, "unreadable", e.strerror or str(e))
        return None
    if not text.strip():
        report.skip(rel, "image not described", "empty description")
        return None
    return Document(doc_id=rel, source_path=rel, text=text, content_hash=text_hash(text), doc_type="image",
                    metadata={"image": True})


def iter_documents(corpus: Path, report: SourceReport | None = None,
                   describe_image: ImageDescriber | None = None, *, follow_symlinks: bool = False,
                   max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                   known: Mapping[str, KnownFile] | None = None) -> Iterator[Document]:
    """Documents of a corpus folder or single file, in a stable (sorted) order.

    `known`: files of the previous run by source path; one whose size and mtime are unchanged is not read,
    its documents come back as they were (text "", doc_type "unread", the previous content hash).

    Images (.png, .jpg, .jpeg) become the text `describe_image(path, rel)` returns; without a describer
    they are skipped and counted. Links, special files, unreadable and oversized files are skipped and
    counted (see the module's walking rules). Raises SourceError when the corpus path itself does not exist.
    """
    report = report if report is not None else SourceReport()
    for path, rel, follow in walk_corpus(corpus, report, follow_symlinks=follow_symlinks):
        yield from read_file(path, rel, report, describe_image, follow=follow, max_file_bytes=max_file_bytes,
                             known=known)


def walk_corpus(corpus: Path, report: SourceReport, *, follow_symlinks: bool = False
                ) -> Iterator[tuple[Path, str, bool]]:
    """The files of a corpus to read, in sorted order: (path, escaped relative path, follow links to read it).

    What is not to be read (links, special files, unreadable folders) is skipped and counted in `report`.
    Raises SourceError when the corpus path itself does not exist.
    """
    if not corpus.exists():
        raise SourceError(f"{corpus}: corpus path does not exist")
    if not corpus.is_dir():  # named explicitly: followed if it is a link
        yield corpus, escape_name(corpus.name), True
        return
    for path, rel in _walk(corpus, report, follow_symlinks):
        yield path, rel, follow_symlinks


def read_file(path: Path, rel: str, report: SourceReport, describe_image: ImageDescriber | None = None, *,
              follow: bool = False, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
              known: Mapping[str, KnownFile] | None = None) -> Iterator[Document]:
    """The documents of one file walk_corpus gave (see iter_documents); counted, or skipped, in `report`."""
    report.files += 1
    suffix = path.suffix.lower()
    stamp = _stamp(path, follow)
    if stamp is not None:
        report.stamps[rel] = stamp
        was = known.get(rel) if known else None
        if was is not None and was[0] == stamp:  # size and mtime as before: its documents are too
            report.unread += 1
            for doc_id, content_hash in was[1]:
                report.documents += 1
                yield Document(doc_id=doc_id, source_path=rel, text="", content_hash=content_hash,
                               doc_type="unread")
            return
    if suffix in IMAGE_SUFFIXES:
        image = _image_document(path, rel, describe_image, report, follow=follow, max_bytes=max_file_bytes)
        if image is not None:
            report.documents += 1
            yield image
        return
    kind = TEXT_SUFFIXES.get(suffix)
    if kind is None:
        report.skip(rel, "unsupported type", escape_name(path.suffix) or "no extension")
        return
    for doc in _file_documents(path, rel, kind, report, follow=follow, max_bytes=max_file_bytes):
        report.documents += 1
        yield doc
