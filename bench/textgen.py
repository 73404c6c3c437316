"""Benchmark text: deterministic, offline, non-repeating English and Russian prose with headings and paragraphs.

Bench-only; English is a word-bigram walk over the docstrings of Python's own standard library, Russian is
built from an inflected word list assembled here. Nothing is downloaded; the same seed gives the same text.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

__all__ = ["english_text", "russian_text"]

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]|[.,;:!?]")


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
                    words = _WORD.findall(doc)
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
_NOUNS_M = ("стол дом город народ закон вопрос ответ процесс проект результат метод анализ документ "
            "текст язык мир век год день час момент образ случай вид путь рост интерес опыт успех "
            "поиск запрос сервер клиент модуль индекс вектор список отчёт план шаг уровень принцип "
            "доступ порядок состав спор выбор выход рынок завод банк театр").split()
_NOUNS_F = ("книга работа система страна жизнь задача программа модель группа сила сторона форма "
            "область власть земля вода рука голова машина школа семья компания организация история "
            "позиция проблема ошибка строка таблица память основа граница служба культура наука "
            "статья речь мысль точка линия цель роль норма оценка функция структура").split()
_NOUNS_N = ("дело слово место время право решение значение развитие условие положение отношение "
            "управление производство движение состояние качество количество общество предприятие "
            "правило исследование изменение окно лицо поле тело средство явление свойство "
            "определение событие требование мнение").split()
_ADJ = ("нов стар больш малень хорош плох важн сложн прост быстр медленн точн полн открыт закрыт "
        "общ главн основн последн перв втор русск научн техническ государственн экономическ "
        "социальн историческ современн отдельн различн возможн известн необходим красн бел "
        "чёрн тёпл холодн длинн коротк широк глубок высок низк ясн тёмн светл").split()
_VERBS = ("дела работа чита писа дума зна понима говори реша изуча созда провод строи использова "
          "получа рассматрива обсужда предлага определя сохраня обрабатыва проверя вычисля "
          "начина заканчива продолжа позволя требова описыва показыва включа содержа").split()
_ADV = ("быстро медленно точно часто редко всегда никогда сегодня вчера завтра здесь там очень "
        "почти совсем уже ещё только также поэтому однако например действительно примерно").split()
_PREP = "в на с по к от до из о для при без через после перед между под над около".split()
_CONJ = "и но а или что чтобы если когда потому что хотя пока так как".split()
_PRON = "он она оно они мы вы я это этот эта эти тот та те весь вся все свой своя".split()
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
