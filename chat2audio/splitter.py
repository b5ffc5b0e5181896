"""Incremental sentence splitting: LLM text pieces in, speakable sentences out.

Pure and deterministic: the sentences produced depend only on the text, never on how it was
cut into pieces, because every decision waits for the character after the one it is about
(the one exception, `SplitterConfig.eager_ends`, is limited to ends the next character is
very unlikely to change; see `_eager_end`).

Two stages. `_SpeechFilter` reads raw characters and drops what is not speech: stage
directions, HTML tags, fenced code, emoji, markdown marks. `spell_symbols` then turns the
symbols left in a finished sentence into words of the sentence's script. `speakable_text`
applies both to a sentence that never went through the splitter (a translation).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from chat2audio.runtime.text import is_cjk, is_speakable, speech_weight

SENTENCE_ENDS = frozenset("。！？!?…；;.\n")
SOFT_BREAKS = frozenset("，、,：:")
CLOSERS = frozenset("\"'”’」』》")
_CLOSERS = "".join(CLOSERS)
QUOTE_PAIRS = {"“": "”", "「": "」", "『": "』", "《": "》", "‘": "’"}
BRACKETS = {"(": ")", "（": "）", "【": "】", "[": "]"}
# Opening mark -> closing mark of a span that is never spoken (stage directions, actions, tags).
UNSPOKEN_SPANS = {**BRACKETS, "*": "*", "<": ">"}
MARKUP_CHARS = frozenset("`|_^()（）【】[]")  # brackets too: one that opens no span is not spoken
SPELLED_SYMBOLS = frozenset("°℃℉")  # symbols (category So) that spell_symbols turns into words
INVISIBLE_CHARS = frozenset("\u200d\ufe0e\ufe0f\u200b")
MAX_UNSPOKEN_SPAN = 160
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_MARK = re.compile(r"\s+(?=[,.!?;:，。！？；：、…])")  # left where a span was dropped
LATIN_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st vs etc prof no jr sr mt ft inc ltd co corp fig approx dept est vol ca cf "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]|[A-Z]")  # "U.S", "e.g", "a.m", "J"
_NUMBER = re.compile(r"\d+(?:[.,:，：．]\d+)*[%℃℉°]?")


def is_dropped_char(ch: str) -> bool:
    """Characters removed wherever they appear: emoji and symbols, markdown marks, brackets that
    open no stage direction, controls. `#*<>~°℃%` are left to `spell_symbols`."""
    if ch in MARKUP_CHARS or ch in INVISIBLE_CHARS:
        return True
    category = unicodedata.category(ch)
    if category in ("So", "Sk", "Cs", "Co", "Cn"):
        return ch not in SPELLED_SYMBOLS
    return category == "Cc" and ch not in "\n\t"


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _continues_word(ch: str) -> bool:
    """ASCII that goes on a word, URL, file name or number: "?q=1", "docs.python", "3,000"."""
    return _ascii_alnum(ch) or (ch != "" and ch in "/=&%#_-@~+")


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
    return last not in "!?;" or not _continues_word(next_ch)


def _soft_break(text: str, next_ch: str) -> bool:
    """A comma or colon where a long run may be cut; never inside "3,000,000", "10:30", "https://"."""
    core = text.rstrip(_CLOSERS)
    if core[-1:] not in SOFT_BREAKS:
        return False
    if core[-1] in ",:":
        return not _continues_word(next_ch)
    return not (core[-2:-1].isdigit() and next_ch.isdigit())


def _inside_quote(quotes: Counter) -> bool:
    return quotes['"'] % 2 == 1 or any(quotes[a] > quotes[b] for a, b in QUOTE_PAIRS.items())


def _eager_end(text: str, quotes: Counter) -> bool:
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
    return safe and not _inside_quote(quotes)


def _cuts_number(text: str, index: int) -> bool:
    return any(m.start() < index < m.end() for m in _NUMBER.finditer(text))


# Symbols a TTS front end drops or misreads, as words: (pattern, English, Chinese). Applied to a
# whole sentence, whose script is known: any CJK character picks the Chinese words.
_SPELLINGS = [
    (r"\s*(?:℃|°\s?C(?![A-Za-z]))", " degrees Celsius", "摄氏度"),
    (r"\s*(?:℉|°\s?F(?![A-Za-z]))", " degrees Fahrenheit", "华氏度"),
    (r"\s*°", " degrees", "度"),
    (r"(\d+(?:[.,]\d+)*)\s*[%％]", r"\1 percent", r"百分之\1"),
    (r"#\s?(?=\d)", "number ", "第"),
    (r"(?<=\d) ?[~～] ?(?=\d)", " to ", "到"),
    (r"\s*(?:-+|=+)>\s*", " ", " "),  # arrows
]
_OPERATORS = {op: (english, zh) for ops, english, zh in [
    ("* ×", "times", "乘"), ("÷", "divided by", "除以"), ("+", "plus", "加"), ("= ==", "equals", "等于"),
    ("<", "less than", "小于"), (">", "greater than", "大于"), ("<= ≤", "less than or equal to", "小于等于"),
    (">= ≥", "greater than or equal to", "大于等于"), ("!= ≠", "not equal to", "不等于"),
] for op in ops.split()}
# Between digits ("1+1=2"), spaced between operands ("a < b"), or "*" in "x*y"; never inside a
# URL ("?q=1").
_OPERATOR = re.compile(
    r"(?:(?<=\d)|(?<=[\w)]) )(<=|>=|!=|==|[*×÷+=<>≤≥≠])(?:(?=[\d-])| (?=[\w(-]))"
    r"|(?<=[A-Za-z\d])([*×÷])(?=[A-Za-z\d])"
)
_LEFTOVER_MARKUP = re.compile(r"[#*<>~～]")  # headings, stray emphasis, arrows: not spoken


def spell_symbols(sentence: str) -> str:
    """Symbols as words of the sentence's script: 30℃ -> "30 degrees Celsius" / "30摄氏度",
    #1 -> "number 1" / "第1", 2*3 -> "2 times 3" / "2乘3"; markup left over ("# Title") is dropped."""
    chinese = any(is_cjk(ch) for ch in sentence)
    for pattern, english, zh in _SPELLINGS:
        sentence = re.sub(pattern, zh if chinese else english, sentence)
    words = (lambda m: _OPERATORS[m[1] or m[2]][1]) if chinese else (lambda m: f" {_OPERATORS[m[1] or m[2]][0]} ")
    return _LEFTOVER_MARKUP.sub("", _OPERATOR.sub(words, sentence))


def speakable_text(sentence: str) -> str:
    """The splitter's whole filter, for one finished sentence that did not go through it."""
    chars: list[str] = []
    speech = _SpeechFilter(chars.append, MAX_UNSPOKEN_SPAN)
    for ch in sentence:
        speech.push(ch)
    speech.flush()
    return _tidy(spell_symbols("".join(chars)))


def _tidy(sentence: str) -> str:
    return _WHITESPACE.sub(" ", _SPACE_BEFORE_MARK.sub("", sentence)).strip()


class _SpeechFilter:
    """Raw characters in, spoken characters out (to `speak`), one at a time.

    Unspoken spans (stage directions in brackets, *actions*, <html tags>) are held until they
    close. One that meets a sentence end or a newline first was no stage direction: it is
    abandoned and its text spoken, so a stray "(" or "*" holds audio back one sentence at most.
    Bracket spans without letters ("[1, 2, 3]", "(3.11)") are spoken, without the brackets.
    "*" opens a span like markdown emphasis: before a non-space, not inside "2*3". "* ", "- "
    or "+ " starting a line is a list bullet, dropped. ``` fenced code is dropped up to its
    closing fence (or the end); `inline code` is spoken without its backticks.
    """

    def __init__(self, speak: Callable[[str], None], max_span: int) -> None:
        self._speak = speak
        self._max_span = max_span
        self._prev, self._line_start = "", True  # the raw character before; only spaces since "\n"
        self._pending = ""  # "*", "<" or a line-start "-"/"+": the next character tells what it is
        self._pending_at = ("", True)  # (_prev, _line_start) before the pending character
        self._ticks = 0  # backticks in a row: 3 or more toggle a code fence
        self._in_fence = False
        self._span = ""  # the open unspoken span, opener first
        self._depth = 0

    @property
    def holding(self) -> bool:
        """True while an open span may still turn out to be speech."""
        return bool(self._span)

    def push(self, ch: str) -> None:
        if self._pending:
            self._resolve_pending(ch)
        if ch == "`" and not self._span:
            self._ticks += 1
        else:
            self._end_ticks()
            if self._span:
                self._push_in_span(ch)
            elif not self._in_fence:
                self._push_plain(ch)
        self._prev, self._line_start = ch, ch == "\n" or (self._line_start and ch in " \t")

    def flush(self) -> None:
        """The text ended: settle what waited for more; an unclosed fence stays dropped."""
        while self._pending or self._ticks or self._span:
            if self._pending:
                self._resolve_pending("")
            self._end_ticks()
            if self._span:
                self._replay(self._span)

    def _end_ticks(self) -> None:
        self._in_fence ^= self._ticks >= 3  # 1 or 2 are inline code marks, dropped
        self._ticks = 0

    def _push_plain(self, ch: str) -> None:
        if ch in "*<" or (ch in "-+" and self._line_start):
            self._pending, self._pending_at = ch, (self._prev, self._line_start)
        elif ch in BRACKETS:
            self._span, self._depth = ch, 1
        elif not is_dropped_char(ch):
            self._speak(ch)

    def _resolve_pending(self, after: str) -> None:
        ch, (before, line_start) = self._pending, self._pending_at
        self._pending = ""
        if line_start and ch in "*-+" and after in (" ", "\t"):
            return  # a list bullet
        if ch == "*" and after.strip() and not (_ascii_alnum(before) and _ascii_alnum(after)):
            self._span, self._depth = ch, 1  # like markdown emphasis; "2*3" is a product
        elif ch == "<" and after and ((after.isascii() and after.isalpha()) or after in "/!"):
            self._span, self._depth = ch, 1  # an HTML tag
        else:
            self._speak(ch)

    def _push_in_span(self, ch: str) -> None:
        self._span += ch
        opener = self._span[0]
        if ch == UNSPOKEN_SPANS[opener]:
            self._depth -= 1
            if self._depth == 0:
                span, self._span = self._span, ""
                if opener in BRACKETS and not any(c.isalpha() for c in span):
                    self._replay(span)  # "[1, 2, 3]": numbers, not a stage direction
                return
        elif ch == opener:
            self._depth += 1
        ends = ch not in SENTENCE_ENDS and ch not in CLOSERS and ends_sentence(self._span[1:-1], ch)
        if ch == "\n" or ends or len(self._span) > self._max_span:
            self._replay(self._span)

    def _replay(self, span: str) -> None:
        """Speak a span after all: its opener as a plain character, then the rest read again."""
        self._span = ""
        if span[0] in "*<":
            self._speak(span[0])  # left to spell_symbols: "5 *3" is a product
        self._prev, self._line_start = span[0], False
        for ch in span[1:]:
            self.push(ch)


@dataclass(frozen=True)
class SplitterConfig:
    """Length knobs, in `speech_weight` units."""

    min_weight: int = 12  # shorter candidates merge into the next sentence
    first_min_weight: int = 6  # the first sentence may be shorter: it sets time-to-first-audio
    first_cut_at_soft_break: bool = True  # the first sentence may end at a comma
    first_soft_break_min_weight: int = 18
    max_weight: int = 150  # longer runs are cut at a comma, else at a word boundary
    max_unspoken_span: int = MAX_UNSPOKEN_SPAN  # a longer "(..." was not a stage direction
    # Emit when a piece ends at an end nothing can extend (see `_eager_end`): one token sooner.
    eager_ends: bool = True
    spell_symbols: bool = True  # False keeps "30℃", "#1", "a < b" as written


class SentenceSplitter:
    """Feed text pieces with `feed`, then call `finish` once; both return finished sentences."""

    def __init__(self, config: SplitterConfig | None = None) -> None:
        self.config = config or SplitterConfig()
        self._buffer = ""  # spoken text not yet emitted
        self._quotes: Counter = Counter()  # quote marks spoken so far, to know if one is open
        self._filter = _SpeechFilter(self._push_spoken, self.config.max_unspoken_span)
        self._out: list[str] = []
        self._emitted_count = 0
        self._finished = False

    def feed(self, piece: str) -> list[str]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        for ch in piece:
            self._filter.push(ch)
        if self.config.eager_ends and not self._filter.holding and _eager_end(self._buffer, self._quotes):
            self._decide_boundary_before(" ")
        out, self._out = self._out, []
        return out

    def finish(self, *, drop_incomplete: bool = False) -> list[str]:
        """Flush the tail. With `drop_incomplete` (the LLM hit its token limit), a tail that is
        not a complete sentence is dropped, unless it is all there is."""
        self._filter.flush()
        self._finished = True
        tail, self._buffer = self._buffer.strip(), ""
        if tail and not (drop_incomplete and self._emitted_count and not ends_sentence(tail)):
            self._emit(tail)
        out, self._out = self._out, []
        return out

    def _push_spoken(self, ch: str) -> None:
        self._decide_boundary_before(ch)
        self._buffer += ch
        if ch in QUOTE_PAIRS or ch in QUOTE_PAIRS.values() or ch == '"':
            self._quotes[ch] += 1
        if speech_weight(self._buffer) > self.config.max_weight:
            self._cut_long_run()

    def _decide_boundary_before(self, next_ch: str) -> None:
        """A sentence ending at the buffer's end is only certain once the next character is
        known (more "!!!", a closing quote, or the digit of "3.14" may follow)."""
        if next_ch in SENTENCE_ENDS or next_ch in CLOSERS or not self._buffer:
            return
        candidate = self._buffer
        first = self._emitted_count == 0
        if ends_sentence(candidate, next_ch):
            minimum = self.config.first_min_weight if first else self.config.min_weight
        elif first and self.config.first_cut_at_soft_break and _soft_break(candidate, next_ch):
            minimum = self.config.first_soft_break_min_weight
        else:
            return
        if speech_weight(candidate) >= minimum and is_speakable(candidate):
            self._buffer = ""
            self._emit(candidate)

    def _cut_long_run(self) -> None:
        text = self._buffer
        cut = self._last_soft_break(text) or _last_word_boundary(text)
        if not cut and speech_weight(text) > 2 * self.config.max_weight:
            cut = len(text)  # one endless "word" (a URL, a key mash): no boundary to respect
        if cut:
            head, self._buffer = text[:cut], text[cut:]
            self._emit(head)

    def _last_soft_break(self, text: str) -> int | None:
        for index in range(len(text) - 1, 0, -1):
            if text[index - 1] in SOFT_BREAKS and _soft_break(text[:index], text[index]):
                if speech_weight(text[:index]) >= self.config.min_weight:
                    return index
        return None

    def _emit(self, sentence: str) -> None:
        if self.config.spell_symbols:
            sentence = spell_symbols(sentence)
        sentence = _tidy(sentence)
        if sentence:
            self._out.append(sentence)
            self._emitted_count += 1


def _last_word_boundary(text: str) -> int | None:
    # The last token may still be growing, so never cut right at the end of the buffer.
    body = text[:-1]
    space = body.rfind(" ")
    if any(is_cjk(ch) for ch in body[space + 1 :]):
        return _last_cjk_word_boundary(text) or (space if space > 0 else None)
    return space if space > 0 else None


def _last_cjk_word_boundary(text: str) -> int | None:
    """Offset of the last jieba word boundary inside `text[:-1]`, never inside a Chinese word
    or a number ("10：30")."""
    import jieba  # imported lazily: its dictionary takes a moment to load

    offsets = []
    position = 0
    for word in jieba.cut(text[:-1], HMM=False):
        position += len(word)
        offsets.append(position)
    inner = [offset for offset in offsets[:-1] if offset > 0 and not _cuts_number(text, offset)]
    return inner[-1] if inner else None
