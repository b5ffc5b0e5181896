"""Where a sentence may end, decided from its text and the character that follows it: the
punctuation both the splitter and the speech filter read, abbreviations, numbers and URLs that
look like ends but are not, and the early end a streamed piece may take."""

from __future__ import annotations

import re
from collections import Counter

SENTENCE_ENDS = frozenset("。！？!?…；;.\n")
SOFT_BREAKS = frozenset("，、,：:")
CLOSERS = frozenset("\"'”’」』》")
_CLOSERS = "".join(CLOSERS)
QUOTE_PAIRS = {"“": "”", "「": "」", "『": "』", "《": "》", "‘": "’"}
BRACKETS = {"(": ")", "（": "）", "【": "】", "[": "]"}
LATIN_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st vs etc prof no jr sr mt ft inc ltd co corp fig approx dept est vol ca cf "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]|[A-Z]")  # "U.S", "e.g", "a.m", "J"
_NUMBER = re.compile(r"\d+(?:[.,:，：．]\d+)*[%℃℉°]?")


def ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def continues_word(ch: str) -> bool:
    """ASCII that goes on a word, URL, file name or number: "?q=1", "docs.python", "3,000"."""
    return ascii_alnum(ch) or (ch != "" and ch in "/=&%#_-@~+")


def ends_sentence(text: str, next_ch: str = " ") -> bool:
    """Whether `text` is a complete sentence, given the spoken character that follows it.
    ASCII marks end one only before a break: "3.14", "config.json", "?q=1" go on."""
    core = text.rstrip(_CLOSERS)
    last = core[-1:]
    if last not in SENTENCE_ENDS:
        return False
    if last == ".":
        if not next_ch.isspace():
            return False
        word = (core[:-1].split()[-1:] or [""])[0].lstrip("\"'“‘(（[")
        return core.endswith("..") or not (word.lower() in LATIN_ABBREVIATIONS or _INITIALISM.fullmatch(word))
    return last not in "!?;" or not continues_word(next_ch)


def soft_break(text: str, next_ch: str) -> bool:
    """A comma or colon where a long run may be cut; never inside "3,000,000", "10:30", "https://"."""
    core = text.rstrip(_CLOSERS)
    if core[-1:] not in SOFT_BREAKS:
        return False
    if core[-1] in ",:":
        return not continues_word(next_ch)
    return not (core[-2:-1].isdigit() and next_ch.isdigit())


def inside_quote(quotes: Counter) -> bool:
    return quotes['"'] % 2 == 1 or any(quotes[a] > quotes[b] for a, b in QUOTE_PAIRS.items())


def eager_end(text: str, quotes: Counter) -> bool:
    """Whether a piece ending with `text` may emit it before the next character is known: only
    where that character is very unlikely to change the sentence. Not at ".", ":", "…" (a URL, a
    time, more dots may follow), not after another end ("!!!"), not inside a quote (its closer
    may follow); "!?," only after a plain word ("search?q=1"). Left: a second mark sent as a
    token of its own ("?" then "!": real vocabularies hold "?!") opens the next sentence."""
    last, before = text[-1:], text[-2:-1]
    word = (text[:-1].split()[-1:] or [""])[0]
    if not last:
        return False
    if last in "。！？" or (last in "，、：" and not before.isdigit()):
        safe = before not in SENTENCE_ENDS
    else:
        safe = last in "!?," and word.isalpha()
    return safe and not inside_quote(quotes)


def cuts_number(text: str, index: int) -> bool:
    return any(m.start() < index < m.end() for m in _NUMBER.finditer(text))
