"""Incremental sentence splitting: LLM text pieces in, speakable sentences out.

Pure and deterministic: the sentences produced depend only on the text, never on how it was
cut into pieces, because every decision waits for the character after the one it is about.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

SENTENCE_ENDS = frozenset("。！？!?…；;.\n")
SOFT_BREAKS = frozenset("，、,：:")
# Ends that cannot be the start of something longer ("3.14", "Mr.") may end a sentence as soon as
# an LLM piece ends with them, without waiting for the next piece: one token sooner to audio.
UNAMBIGUOUS_ENDS = frozenset("。！？!?…")
CLOSERS = frozenset("\"'”’」』）)】]》>")
# Opening mark -> closing mark of a span that is never spoken (stage directions, actions).
UNSPOKEN_SPANS = {"(": ")", "（": "）", "【": "】", "[": "]", "*": "*"}
MARKDOWN_CHARS = frozenset("#`~|_^<>")
INVISIBLE_CHARS = frozenset("\u200d\ufe0e\ufe0f\u200b")
_WHITESPACE = re.compile(r"\s+")
LATIN_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "prof", "no"})


def is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0xAC00 <= code <= 0xD7AF


def speech_weight(text: str) -> int:
    """Rough spoken length: a CJK character says about as much as three Latin letters."""
    return sum(3 if is_cjk(ch) else 1 for ch in text if not ch.isspace())


def is_speakable(text: str) -> bool:
    """True when the text holds at least one letter or digit a TTS engine can say."""
    return any(ch.isalnum() for ch in text)


def is_dropped_char(ch: str) -> bool:
    """Characters removed wherever they appear: emoji and symbols, markdown marks, controls."""
    if ch in MARKDOWN_CHARS or ch in INVISIBLE_CHARS:
        return True
    category = unicodedata.category(ch)
    if category in ("So", "Sk", "Cs", "Co", "Cn"):
        return True
    return category == "Cc" and ch not in "\n\t"


@dataclass(frozen=True)
class SplitterConfig:
    """Length knobs, in `speech_weight` units."""

    min_weight: int = 12  # shorter candidates merge into the next sentence
    first_min_weight: int = 6  # the first sentence may be shorter: it sets time-to-first-audio
    first_cut_at_soft_break: bool = True  # the first sentence may end at a comma
    first_soft_break_min_weight: int = 18
    max_weight: int = 150  # longer runs are cut at a comma, else at a word boundary
    max_unspoken_span: int = 160  # an unclosed "(" longer than this was not a stage direction
    # Emit at an unambiguous end (。！？!?…) when a piece ends there. Faster, but a closing quote
    # that arrives in the next piece then opens the next sentence instead of closing this one,
    # so the sentences depend (in punctuation only) on how the text was cut.
    eager_ends: bool = True


class SentenceSplitter:
    """Feed text pieces with `feed`, then call `finish` once; both return finished sentences."""

    def __init__(self, config: SplitterConfig | None = None) -> None:
        self.config = config or SplitterConfig()
        self._buffer = ""  # spoken text not yet emitted
        self._span_closer: str | None = None  # set while inside an unspoken span
        self._span_depth = 0
        self._span_text = ""  # the unspoken span so far, restored if it never closes
        self._emitted_count = 0
        self._finished = False

    @property
    def emitted_count(self) -> int:
        return self._emitted_count

    def feed(self, piece: str) -> list[str]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        out: list[str] = []
        for ch in piece:
            self._push(ch, out)
        if self.config.eager_ends and self._span_closer is None and self._ends_unambiguously(self._buffer):
            self._decide_boundary_before(" ", out)
        return out

    def finish(self, *, drop_incomplete: bool = False) -> list[str]:
        """Flush the tail. With `drop_incomplete` (the LLM hit its token limit), a tail that is
        not a complete sentence is dropped, unless it is all there is."""
        out: list[str] = []
        while self._span_closer is not None:  # what an abandoned span restores may open another
            self._abandon_span(out)
        self._finished = True
        tail = self._buffer.strip()
        self._buffer = ""
        if not tail:
            return out
        if drop_incomplete and self._emitted_count + len(out) > 0 and not self._ends_sentence(tail):
            return out
        self._emit(tail, out)
        return out

    # -- character level -----------------------------------------------------------------

    def _push(self, ch: str, out: list[str]) -> None:
        if self._span_closer is not None:
            self._push_in_span(ch, out)
            return
        if ch in UNSPOKEN_SPANS:
            self._span_closer = UNSPOKEN_SPANS[ch]
            self._span_depth = 1
            self._span_text = ch
            return
        if is_dropped_char(ch):
            return
        self._decide_boundary_before(ch, out)
        self._buffer += ch
        if speech_weight(self._buffer) > self.config.max_weight:
            self._cut_long_run(out)

    def _push_in_span(self, ch: str, out: list[str]) -> None:
        opener = self._span_text[0]
        self._span_text += ch
        if ch == self._span_closer:
            self._span_depth -= 1
            if self._span_depth == 0:
                self._span_closer = None
                self._span_text = ""
                return
        elif ch == opener:
            self._span_depth += 1
        if len(self._span_text) > self.config.max_unspoken_span:
            self._abandon_span(out)

    def _abandon_span(self, out: list[str]) -> None:
        """An opener that never closed: drop the mark itself, speak what followed it."""
        restored = self._span_text[1:]
        self._span_closer = None
        self._span_text = ""
        for ch in restored:
            self._push(ch, out)

    # -- sentence level ------------------------------------------------------------------

    def _decide_boundary_before(self, next_ch: str, out: list[str]) -> None:
        """A sentence ending at the buffer's end is only certain once the next character is
        known (more "!!!", a closing quote, or the digit of "3.14" may follow)."""
        if next_ch in SENTENCE_ENDS or next_ch in CLOSERS or not self._buffer:
            return
        candidate = self._buffer
        if self._ends_sentence(candidate, next_ch):
            minimum = self.config.min_weight if self._emitted_count else self.config.first_min_weight
        elif (
            self.config.first_cut_at_soft_break
            and self._emitted_count == 0
            and candidate.rstrip("".join(CLOSERS))[-1:] in SOFT_BREAKS
        ):
            minimum = self.config.first_soft_break_min_weight
        else:
            return
        if speech_weight(candidate) >= minimum and is_speakable(candidate):
            self._buffer = ""
            self._emit(candidate, out)

    def _ends_sentence(self, text: str, next_ch: str = " ") -> bool:
        core = text.rstrip("".join(CLOSERS))
        last = core[-1:]
        if last not in SENTENCE_ENDS:
            return False
        if last != "." or core.endswith(".."):
            return True
        # A lone "." ends a sentence only before whitespace, and not after an abbreviation.
        if not next_ch.isspace():
            return False
        last_word = core[:-1].split()[-1:] or [""]
        return last_word[0].lower() not in LATIN_ABBREVIATIONS

    @staticmethod
    def _ends_unambiguously(text: str) -> bool:
        """True when nothing that may follow can change where this sentence (or the first
        sentence's comma cut) ends: 。！？!?…，、, or "." "," ":" after a word of two or more
        letters that is not an abbreviation (not "3." "1," or "U.")."""
        if text[-1:] in UNAMBIGUOUS_ENDS or text[-1:] in "，、：":
            return True
        if text[-1:] not in ".,:" or text.endswith(".."):
            return False
        word = text[:-1].split()[-1:] or [""]
        return len(word[0]) >= 2 and word[0].isalpha() and word[0].lower() not in LATIN_ABBREVIATIONS

    def _cut_long_run(self, out: list[str]) -> None:
        text = self._buffer
        cut = self._last_soft_break(text)
        if cut is None:
            cut = self._last_word_boundary(text)
        if (cut is None or cut <= 0) and speech_weight(text) > 2 * self.config.max_weight:
            cut = len(text)  # one endless "word" (a URL, a key mash): no boundary to respect
        if cut is None or cut <= 0:
            return
        head, self._buffer = text[:cut], text[cut:]
        self._emit(head, out)

    def _last_soft_break(self, text: str) -> int | None:
        minimum = self.config.min_weight
        for index in range(len(text) - 1, 0, -1):
            if text[index - 1] in SOFT_BREAKS and speech_weight(text[:index]) >= minimum:
                return index
        return None

    @staticmethod
    def _last_word_boundary(text: str) -> int | None:
        # The last token may still be growing, so never cut right at the end of the buffer.
        body = text[:-1]
        space = body.rfind(" ")
        if any(is_cjk(ch) for ch in body[space + 1 :]):
            return _last_cjk_word_boundary(body) or (space if space > 0 else None)
        return space if space > 0 else None

    def _emit(self, sentence: str, out: list[str]) -> None:
        sentence = _WHITESPACE.sub(" ", sentence).strip()
        if sentence:
            out.append(sentence)
            self._emitted_count += 1


def _last_cjk_word_boundary(text: str) -> int | None:
    """Offset of the last jieba word boundary inside `text` (never inside a Chinese word)."""
    import jieba  # imported lazily: its dictionary takes a moment to load

    offsets = []
    position = 0
    for word in jieba.cut(text, HMM=False):
        position += len(word)
        offsets.append(position)
    inner = [offset for offset in offsets[:-1] if offset > 0]
    return inner[-1] if inner else None
