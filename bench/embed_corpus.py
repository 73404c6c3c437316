"""Embedding benchmark corpus: 20,000 passages of 80-300 words, English and Russian, as one .jsonl file.

Bench-only and offline: slices of the chunking benchmark's generated prose (bench_chunking.english_text,
russian_text), cut at word boundaries; the same seed gives the same file.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chunking import english_text, russian_text  # noqa: E402

__all__ = ["write_corpus"]

_PIECE = re.compile(r"\S+\s*")  # a word with the whitespace after it, so paragraphs survive the cut
_AVG_CHARS_PER_WORD = {"en": 6.5, "ru": 8.0}


def _passages(text: str, count: int, rng: random.Random) -> list[str]:
    words = _PIECE.findall(text)
    out, at = [], 0
    for _ in range(count):
        n = rng.randint(80, 300)
        if at + n > len(words):
            raise ValueError("generated text too short for the passages asked for")
        out.append("".join(words[at:at + n]).strip())
        at += n
    return out


def write_corpus(path: Path, passages: int = 20_000, seed: int = 7) -> Path:
    """Write (or reuse, when it already exists) the corpus file; half English, half Russian, interleaved."""
    if path.exists():
        return path
    rng = random.Random(seed)
    half = passages // 2
    budget = {lang: int((passages - half if lang == "ru" else half) * 200 * _AVG_CHARS_PER_WORD[lang])
              for lang in ("en", "ru")}
    english = _passages(english_text(budget["en"], seed=seed), half, rng)
    russian = _passages(russian_text(budget["ru"], seed=seed + 1), passages - half, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for i in range(passages):
            lang = "en" if i % 2 == 0 else "ru"
            text = english[i // 2] if lang == "en" else russian[i // 2]
            f.write(orjson.dumps({"id": f"p{i:05d}", "text": text, "metadata": {"lang": lang}}) + b"\n")
    tmp.replace(path)
    return path


if __name__ == "__main__":
    out = write_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/pipeline-bench-embed/corpus.jsonl"))
    print(out, out.stat().st_size)
