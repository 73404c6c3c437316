"""Records: the value types that flow between stages (Document, Chunk, Hit, ModelSpec).

Plain frozen dataclasses; no I/O, no third-party imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Chunk", "Document", "Hit", "ModelSpec"]

ModelKind = Literal["embed", "chat"]


@dataclass(frozen=True)
class ModelSpec:
    """One model of the registry (pipeline/models.toml, or a user's override)."""

    name: str
    provider: str  # "local", "gigachat", "openai"
    kind: ModelKind
    max_input_tokens: int
    dimension: int = 0  # embedding models only
    query_instruction: str = ""  # prepended to search queries (asymmetric models)
    passage_instruction: str = ""  # prepended to passages
    normalize: bool = True  # L2-normalise vectors, then search by inner product
    max_batch_texts: int = 100
    max_batch_tokens: int = 0  # 0: no per-request token cap
    max_concurrency: int = 0  # 0: as configured; a local CPU model wants 1
    tokenizer: str = "proxy"  # "proxy" (offline estimate) or "e5" (exact, local model)
    vision: bool = False
    description: str = ""


@dataclass(frozen=True)
class Document:
    """One text from the corpus: a file, or one record of a .jsonl file."""

    doc_id: str  # path relative to the corpus root, plus "#<record id>" for .jsonl records
    source_path: str  # path relative to the corpus root
    text: str
    content_hash: str  # sha256 hex of the text
    doc_type: str  # "txt", "md", "html", "jsonl"
    metadata: dict[str, Any] = field(default_factory=dict)
    # (offset of the heading's line in text, level 1-6, heading text) in text order: Markdown ATX headings
    # and HTML h1-h6, as sources found them; what contextual chunks put in front of a chunk
    headings: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """A slice of a Document that fits the model's input limit: text == doc.text[char_start:char_end]."""

    chunk_id: str  # f"{doc_id}:{chunk_index}"
    doc_id: str
    source_path: str
    chunk_index: int
    char_start: int  # includes the overlap taken from the previous chunk
    char_end: int
    text: str
    token_count: int  # of embed_text, what the model is sent
    content_hash: str  # sha256 hex of embed_text (== of text when there is no context)
    doc_type: str = ""
    overlap_chars: int = 0  # the first overlap_chars of text repeat the previous chunk's end
    metadata: dict[str, Any] = field(default_factory=dict)
    context: str = ""  # contextual chunks: the title and heading path embedded in front of text

    @property
    def embed_text(self) -> str:
        """What the model embeds: the context, then the chunk's own text."""
        return self.context + self.text if self.context else self.text


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    score: float
    chunk_id: str
    doc_id: str
    source_path: str
    chunk_index: int
    char_start: int
    char_end: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
