"""Search filters: which chunk rows a search may return, by source path glob, document type and metadata.

Pure over the rows table (pyarrow): a filter becomes a boolean mask over FAISS ids; search.py applies it.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ConfigError

__all__ = ["SearchFilter"]


@dataclass(frozen=True)
class SearchFilter:
    """All conditions must hold. Values are shell globs (`en/*`, `*.md`, `coff*`), matched case-sensitively.

    path: the chunk's source path relative to the corpus root; doc_type: txt, md, html, jsonl;
    fields: (key, value) pairs on a .jsonl record's metadata (`a.b` reaches nested keys; a list matches
    when any element does).
    """

    path: str | None = None
    doc_type: str | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.path or self.doc_type or self.fields)

    @classmethod
    def parse(cls, *, path: str | None = None, doc_type: str | None = None,
              fields: Sequence[str] = ()) -> SearchFilter:
        """From CLI-shaped options: fields as "key=value". Raises ConfigError on a malformed one."""
        pairs = []
        for item in fields:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--filter {item!r}: expected KEY=VALUE, e.g. --filter lang=en")
            pairs.append((key.strip(), value.strip()))
        return cls(path or None, (doc_type or "").lstrip(".") or None, tuple(pairs))

    def mask(self, rows: pa.Table) -> np.ndarray:
        """True for each row (FAISS id) the filter lets through."""
        keep = np.ones(rows.num_rows, dtype=bool)
        if self.path:
            keep &= _glob_mask(rows.column("source_path"), lambda v: fnmatch.fnmatchcase(v or "", self.path or ""))
        if self.doc_type:
            keep &= _glob_mask(rows.column("doc_type"),
                               lambda v: fnmatch.fnmatchcase(v or "", self.doc_type or ""))
        if self.fields:
            keep &= _glob_mask(rows.column("metadata"), lambda v: self._metadata_matches(v))
        return keep

    def _metadata_matches(self, raw: str | None) -> bool:
        try:
            meta = json.loads(raw or "{}")
        except json.JSONDecodeError:
            return False
        return all(_matches(_lookup(meta, key), pattern) for key, pattern in self.fields)


def _glob_mask(column: pa.ChunkedArray, test: Any) -> np.ndarray:
    """test() once per distinct value (chunks of one document share path and metadata), spread to rows."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    passing = np.array([bool(test(v)) for v in encoded.dictionary.to_pylist()] + [False], dtype=bool)
    codes = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)
    return passing[codes]


def _lookup(meta: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(meta, dict) or part not in meta:
            return None
        meta = meta[part]
    return meta


def _matches(value: Any, pattern: str) -> bool:
    if value is None:
        return False
    if isinstance(value, list):
        return any(_matches(v, pattern) for v in value)
    text = json.dumps(value) if isinstance(value, bool) else str(value)
    return fnmatch.fnmatchcase(text, pattern)
