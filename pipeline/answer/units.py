"""Answer units: a chunk's text cut into what an extractive answer quotes (sentences, list items, table rows,
code, headings), each knowing what it introduces: a heading its section, "...:" its list, a question its answer.

Pure text in, spans out; works on the stored chunk text (Markdown, plain text, or html_to_text's rendering).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["HEADING", "SENTENCE", "ITEM", "ROW", "CODE", "Unit", "split_sentences", "split_units"]

HEADING, SENTENCE, ITEM, ROW, CODE = "heading", "sentence", "item", "row", "code"

# A sentence ends at . ! ? … (optionally closed by quotes or brackets) followed by whitespace and a character
# that may start a sentence: "e.g. 30 g" or "т. е. так" is not cut.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'»”)\]]*\s+(?![a-zа-яё])")
_HEADING = re.compile(r"#{1,6}(?=\s)")
_ITEM = re.compile(r"(?:[-*+•]|\d{1,3}[.)])(?=\s)")
_FENCE = re.compile(r"(`{3,}|~{3,})")
_TABLE_RULE = re.compile(r"\|?[\s:|-]*-{3,}[\s:|-]*\|?")
_PROSE_END = re.compile(r"[.!?…:][\"'»”)\]*_`]*$")  # a line ending so is prose, not a list fragment
_TITLE_MAX_CHARS = 100


@dataclass(frozen=True)
class Unit:
    """One quotable piece of a chunk: its kind, span in the chunk's text and flattened text.

    `text` is what is embedded and shown: whitespace collapsed, a heading's #s and an item's marker taken off
    (the marker is kept apart). `block` numbers the paragraph, list or table the unit is in; `body` holds the
    indices of the units it introduces (see _link): a heading's section, a "...:"'s list, a question's answer.
    """

    kind: str
    start: int
    end: int
    text: str
    block: int
    marker: str = ""
    level: int = 0
    body: tuple[int, ...] = ()


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans (start, end) of a paragraph, whitespace trimmed; pieces under 3 characters are dropped."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        piece = text[a:b]
        stripped = piece.strip()
        if len(stripped) >= 3:
            lead = len(piece) - len(piece.lstrip())
            out.append((a + lead, a + lead + len(stripped)))
    return out


def _flat(text: str) -> str:
    return " ".join(text.split())


class _Splitter:
    def __init__(self, text: str, *, title: bool, lines_are_blocks: bool) -> None:
        self.text = text
        self.title = title
        self.lines_are_blocks = lines_are_blocks
        self.units: list[Unit] = []
        self.block = 0
        self.para: list[tuple[int, int]] = []  # (start, end) of the current paragraph's lines
        self.item: list[int] = []  # [start, end, marker end] of the item being continued

    def add(self, kind: str, start: int, end: int, text: str, *, marker: str = "", level: int = 0) -> None:
        text = text.strip("\n") if kind == CODE else _flat(text)
        if text.strip():
            self.units.append(Unit(kind, start, end, text, self.block, marker, level))

    def new_block(self) -> None:
        self.flush()
        self.block += 1

    def flush(self) -> None:
        if self.item:
            start, end, body = self.item
            self.add(ITEM, start, end, self.text[body:end], marker=self.text[start:body].strip())
            self.item = []
        if self.para:
            self._paragraph(self.para[0][0], self.para[-1][1], single=len(self.para) == 1)
            self.para = []

    def _paragraph(self, start: int, end: int, *, single: bool) -> None:
        piece = self.text[start:end]
        line = piece.strip()
        if single and self.title and not self.units and len(line) <= _TITLE_MAX_CHARS \
                and not re.search(r"[.!?…:;,]$", line):
            self.add(HEADING, start, end, line, level=1)  # a plain-text document's first line: its title
        elif single and (not _PROSE_END.search(line) or line[0].islower()):
            self.add(ITEM, start, end, line)  # a fragment (ends in ";", "," or nothing, or starts lower-case): <li>
        else:
            for a, b in split_sentences(piece):
                self.add(SENTENCE, start + a, start + b, piece[a:b])
        self.block += 1

    def run(self) -> list[Unit]:
        text, pos = self.text, 0
        lines = text.splitlines(keepends=True)
        i = 0
        while i < len(lines):
            line = lines[i]
            start, end = pos, pos + len(line.rstrip("\r\n"))
            pos += len(line)
            i += 1
            stripped = line.strip()
            indent = len(line) - len(line.lstrip())
            if not stripped:
                self.new_block()
                continue
            fence = _FENCE.match(stripped)
            if fence:
                self.new_block()
                close, body_start, code_end = fence.group(1)[0] * 3, pos, len(text)
                while i < len(lines):
                    inner = lines[i]
                    i += 1
                    if inner.strip().startswith(close):
                        code_end = pos
                        pos += len(inner)
                        break
                    pos += len(inner)
                self.add(CODE, start, min(pos, len(text)), text[body_start:code_end])
                self.new_block()
                continue
            heading = _HEADING.match(stripped)
            if heading:
                self.new_block()
                self.add(HEADING, start, end, stripped[heading.end():].strip(" #"), level=len(heading.group()))
                self.new_block()
                continue
            if stripped.startswith("|"):
                if self.para or self.item:
                    self.new_block()
                if not _TABLE_RULE.fullmatch(stripped):
                    self.add(ROW, start, end, stripped)
                continue
            marker = _ITEM.match(stripped)
            if marker:
                if self.para:
                    self.new_block()
                self.flush()  # the previous item of this list, if any
                self.item = [start + indent, end, start + indent + marker.end()]
                continue
            if self.item:  # a continuation line of a list item
                self.item[1] = end
                continue
            if self.lines_are_blocks and self.para:  # html_to_text breaks lines only at <li> and <br>
                self.new_block()
            self.para.append((start, end))
        self.flush()
        return self._link(self.units)

    @staticmethod
    def _link(units: list[Unit]) -> list[Unit]:
        """Fill each unit's body: a heading's section; the list, table or code right after a unit ending in
        ":"; the rest of a question's paragraph (a FAQ's answer), or the next paragraph when it ends one."""
        out = []
        for i, unit in enumerate(units):
            body: list[int] = []
            if unit.kind == HEADING:
                for j in range(i + 1, len(units)):
                    if units[j].kind == HEADING and units[j].level <= unit.level:
                        break
                    body.append(j)
            elif unit.text.endswith(":"):
                for j in range(i + 1, len(units)):
                    if units[j].kind not in (ITEM, ROW, CODE):
                        break
                    body.append(j)
            elif unit.text.endswith("?") and i + 1 < len(units) and units[i + 1].kind != HEADING:
                block = units[i + 1].block
                body = [j for j in range(i + 1, len(units)) if units[j].block == block]
            out.append(Unit(unit.kind, unit.start, unit.end, unit.text, unit.block, unit.marker, unit.level,
                            tuple(body)) if body else unit)
        return out


def split_units(text: str, *, title: bool = False, lines_are_blocks: bool = False) -> list[Unit]:
    """The answer units of a chunk's text, in order.

    `title`: the chunk starts its document, so a short unpunctuated first line is the document's title (plain
    text has no other heading mark). `lines_are_blocks`: every line is its own block (html_to_text's output,
    where a line break is an <li> or <br>), not a wrapped line of a paragraph.
    """
    return _Splitter(text, title=title, lines_are_blocks=lines_are_blocks).run()
