"""Answer records: Answer, its numbered Sources and the Citations --json reports.

Plain dataclasses, no logic; the extractive and chat answers both fill an Answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Answer", "Citation", "Source"]


@dataclass(frozen=True)
class Source:
    n: int
    chunk_id: str
    source_path: str
    char_start: int
    char_end: int
    score: float


@dataclass(frozen=True)
class Citation:
    """A cited source as --json reports it: its number, chunk id and character range in the document."""

    n: int
    chunk_id: str
    source_path: str
    char_start: int
    char_end: int


@dataclass
class Answer:
    question: str
    text: str
    sources: list[Source]
    cited: list[int] = field(default_factory=list)
    unknown_citations: list[int] = field(default_factory=list)
    grounded: bool = True  # False when the answer cites nothing it was given
    mode: str = "extractive"  # "extractive", "chat" (streamed text) or "structured" (JSON schema)
    citations: list[Citation] = field(default_factory=list)
    model: str = ""  # the chat model, for mode chat/structured
    finish_reason: str = ""
    truncated: bool = False  # cut at max_tokens (finish_reason length)
    searches: list[str] = field(default_factory=list)  # queries of the model's search_corpus calls
    warnings: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
