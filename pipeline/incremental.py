"""Incremental: diff a corpus against the live snapshot's manifest, as it is read.

Pure over Documents and manifest entries; decides what to chunk and embed, never calls a provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .records import Document

__all__ = ["CorpusDiff", "diff_corpus", "diff_stream"]


@dataclass
class CorpusDiff:
    """Documents of this run sorted into what the previous snapshot already holds and what it does not.

    Ids only: the documents themselves stream on to the chunker, so a diff costs a few bytes a document.
    """

    unchanged: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def to_chunk(self) -> list[str]:
        return self.added + self.changed

    def mark(self, doc_id: str, content_hash: str, previous: Mapping[str, Mapping[str, Any]]) -> bool:
        """Sort one document read this run; True when it is to be chunked (added or changed)."""
        before = previous.get(doc_id)
        if before is None:
            self.added.append(doc_id)
        elif before.get("content_hash") != content_hash:
            self.changed.append(doc_id)
        else:
            self.unchanged.append(doc_id)
            return False
        return True

    def finish(self, previous: Mapping[str, Mapping[str, Any]], seen: set[str]) -> None:
        """After the last document: those of `previous` not seen this run are deleted."""
        self.deleted = sorted(set(previous) - seen)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed), "deleted": len(self.deleted),
                "unchanged": len(self.unchanged)}


def diff_corpus(docs: Iterable[Document], previous: Mapping[str, Mapping[str, Any]] | None) -> CorpusDiff:
    """Sort documents against the previous manifest's {doc_id: {"content_hash": ...}}.

    A document the previous run could not embed is absent from `previous`, so it counts as added.
    """
    diff = CorpusDiff()
    for _ in diff_stream(docs, previous, diff):
        pass
    return diff


def diff_stream(docs: Iterable[Document], previous: Mapping[str, Mapping[str, Any]] | None,
                diff: CorpusDiff) -> Iterator[Document]:
    """diff_corpus as it reads: yields each added or changed document at once; `diff` is whole at the end.

    So chunking and embedding start with the first file instead of after the whole corpus is read.
    """
    previous = previous or {}
    seen: set[str] = set()
    for doc in docs:
        seen.add(doc.doc_id)
        if diff.mark(doc.doc_id, doc.content_hash, previous):
            yield doc
    diff.finish(previous, seen)
