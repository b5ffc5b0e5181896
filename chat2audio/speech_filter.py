"""What of an LLM's text is spoken: stage directions, markup, code and emoji dropped, symbols
turned into words. `SpeechFilter` works a character at a time for the splitter; `speakable_text`
applies the same rules to one finished sentence (a translation)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from chat2audio.runtime.text import is_cjk
from chat2audio.sentence_ends import BRACKETS, CLOSERS, SENTENCE_ENDS, ascii_alnum, ends_sentence

# Opening mark -> closing mark of a span that is never spoken (stage directions, actions, tags).
UNSPOKEN_SPANS = {**BRACKETS, "*": "*", "<": ">"}
MARKUP_CHARS = frozenset("`|_^()（）【】[]")  # brackets too: one that opens no span is not spoken
SPELLED_SYMBOLS = frozenset("°℃℉")  # symbols (category So) that spell_symbols turns into words
INVISIBLE_CHARS = frozenset("\u200d\ufe0e\ufe0f\u200b")
MAX_UNSPOKEN_SPAN = 160
# Re-reading of given-up spans allowed (see SpeechFilter._replay): per character pushed, and per
# character of the span limit (ordinary text never comes near either).
REREAD_PER_CHAR = 2
REREAD_PER_SPAN = MAX_UNSPOKEN_SPAN
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_MARK = re.compile(r"\s+(?=[,.!?;:，。！？；：、…])")  # left where a span was dropped


def is_dropped_char(ch: str) -> bool:
    """Characters removed wherever they appear: emoji and symbols, markdown marks, brackets that
    open no stage direction, controls. `#*<>~°℃%` are left to `spell_symbols`."""
    if ch in MARKUP_CHARS or ch in INVISIBLE_CHARS:
        return True
    category = unicodedata.category(ch)
    if category in ("So", "Sk", "Cs", "Co", "Cn"):
        return ch not in SPELLED_SYMBOLS
    return category == "Cc" and ch not in "\n\t"


# Symbols a TTS front end drops or misreads, as words: (pattern, English, Chinese). Applied to a
# whole sentence, whose script is known: any CJK character picks the Chinese words.
_SPELLINGS = [
    (r"\s*(?:℃|°\s?C(?![A-Za-z]))", " degrees Celsius", "摄氏度"),
    (r"\s*(?:℉|°\s?F(?![A-Za-z]))", " degrees Fahrenheit", "华氏度"),
    (r"\s*°", " degrees", "度"),
    # Each starts only at the start of its run ("(?<!…)"): tried inside a long run of digits or
    # dashes, a pattern rescanned the rest of the run from every character (quadratic).
    (r"(?<![\d.,])(\d+(?:[.,]\d+)*)\s*[%％]", r"\1 percent", r"百分之\1"),
    (r"#\s?(?=\d)", "number ", "第"),
    (r"(?<=\d) ?[~～] ?(?=\d)", " to ", "到"),
    (r"\s*(?<![-=])(?:-+|=+)>\s*", " ", " "),  # arrows
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
    speech = SpeechFilter(chars.append, MAX_UNSPOKEN_SPAN)
    for ch in sentence:
        speech.push(ch)
    speech.flush()
    return tidy(spell_symbols(_WHITESPACE.sub(" ", "".join(chars))))  # joined first: see tidy()


def tidy(sentence: str) -> str:
    # Runs of spaces joined first: the lookahead of _SPACE_BEFORE_MARK rescans a long run from
    # each of its characters (4,096 spaces took 1.5 s).
    return _SPACE_BEFORE_MARK.sub("", _WHITESPACE.sub(" ", sentence)).strip()


class SpeechFilter:
    """Raw characters in, spoken characters out (to `speak`), one at a time.

    Unspoken spans (stage directions in brackets, *actions*, <html tags>) are held until they
    close. One that meets a sentence end or a newline first was no stage direction: it is
    abandoned and its text spoken, so a stray "(" or "*" holds audio back one sentence at most.
    Bracket spans without letters ("[1, 2, 3]", "(3.11)") are spoken, without the brackets.
    A span given up is read again (spans in it may open), within a budget past which it is read
    as plain text: linear time on any text.
    "*" opens a span like markdown emphasis: before a non-space, not inside "2*3". "* ", "- "
    or "+ " starting a line is a list bullet, dropped. ``` fenced code is dropped up to its
    closing fence (or the end); `inline code` is spoken without its backticks.
    """

    def __init__(
        self, speak: Callable[[str], None], max_span: int, on_dropped: Callable[[str], None] | None = None
    ) -> None:
        self._speak = speak
        self._on_dropped = on_dropped  # told each unspoken span dropped (the splitter reads style tags)
        self._max_span = max_span
        self._prev, self._line_start = "", True  # the raw character before; only spaces since "\n"
        self._pending = ""  # "*", "<" or a line-start "-"/"+": the next character tells what it is
        self._pending_at = ("", True)  # (_prev, _line_start) before the pending character
        self._ticks = 0  # backticks in a row: 3 or more toggle a code fence
        self._in_fence = False
        self._span = ""  # the open unspoken span, opener first
        self._depth = 0
        self._replaying = False  # reading a given-up span's text again as plain text: it opens no span
        self._read = 0  # characters pushed
        self._reread = 0  # characters read again in given-up spans

    @property
    def holding(self) -> bool:
        """True while an open span may still turn out to be speech."""
        return bool(self._span)

    def push(self, ch: str) -> None:
        self._read += 1
        self._push(ch)

    def _push(self, ch: str) -> None:
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
        elif ch in BRACKETS and not self._replaying:
            self._span, self._depth = ch, 1
        elif not is_dropped_char(ch):
            self._speak(ch)

    def _resolve_pending(self, after: str) -> None:
        ch, (before, line_start) = self._pending, self._pending_at
        self._pending = ""
        if line_start and ch in "*-+" and after in (" ", "\t"):
            return  # a list bullet
        if self._replaying:
            self._speak(ch)
            return
        if ch == "*" and after.strip() and not (ascii_alnum(before) and ascii_alnum(after)):
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
                elif self._on_dropped is not None:
                    self._on_dropped(span)
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
        # Its text is read again, spans in it opening as anywhere. Openers that give up in turn
        # ("((((…", 160 deep) made that cost up to the span limit per character: past a budget
        # of re-reading (a few times the text, plus a fixed allowance) a given-up span is read
        # again as plain text that opens no span, so any text is filtered in linear time.
        replaying = self._replaying
        self._replaying = replaying or self._reread > REREAD_PER_CHAR * self._read + REREAD_PER_SPAN * self._max_span
        self._reread += len(span) - 1
        try:
            for ch in span[1:]:
                self._push(ch)
        finally:
            self._replaying = replaying
