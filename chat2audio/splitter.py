"""Incremental sentence splitting: LLM text pieces in, speakable sentences out.

Pure and deterministic: the sentences produced depend only on the text, never on how it was
cut into pieces, because every decision waits for the character after the one it is about
(the one exception, `SplitterConfig.eager_ends`, is limited to ends the next character is
very unlikely to change; see `sentence_ends.eager_end`).

Two stages. `speech_filter.SpeechFilter` reads raw characters and drops what is not speech:
stage directions, HTML tags, fenced code, emoji, markdown marks. Here they are cut into
sentences, whose left-over symbols `spell_symbols` turns into words of the sentence's script.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from chat2audio.runtime.text import is_cjk, is_speakable, speech_weight
from chat2audio.sentence_ends import (
    CLOSERS,
    QUOTE_PAIRS,
    SENTENCE_ENDS,
    SOFT_BREAKS,
    cuts_number,
    eager_end,
    ends_sentence,
    soft_break,
)
from chat2audio.speech_filter import MAX_UNSPOKEN_SPAN, SpeechFilter, speakable_text, spell_symbols, tidy

__all__ = ["Sentence", "SentenceSplitter", "SplitterConfig", "ends_sentence", "speakable_text", "style_tag"]


class Sentence(str):
    """A sentence the splitter emits: its text (a `str`, for everything that needs no more), and
    the style (mood) it is spoken in, set by the last style tag before it (None: the voice's own)."""

    style: str | None

    def __new__(cls, text: str, style: str | None = None) -> Sentence:
        sentence = super().__new__(cls, text)
        sentence.style = style
        return sentence


def style_tag(span: str) -> str | None:
    """The style a dropped span names, if it is a tag like "[happy]" (case and spaces ignored)."""
    if len(span) < 3 or span[0] != "[" or span[-1] != "]":
        return None
    return span[1:-1].strip().lower() or None


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

    def __init__(
        self, config: SplitterConfig | None = None, *, styles: frozenset[str] = frozenset(), style: str | None = None
    ) -> None:
        """`styles`: the style names whose tags ("[happy]") switch the style of what follows
        (other tags are dropped like any stage direction); `style`: the one before any tag."""
        self.config = config or SplitterConfig()
        self._styles = styles
        self.style = style
        self._buffer = ""  # spoken text not yet emitted
        self._weight = 0  # speech_weight(self._buffer), kept as characters come: no rescan per character
        self._quotes: Counter = Counter()  # quote marks spoken so far, to know if one is open
        self._filter = SpeechFilter(self._push_spoken, self.config.max_unspoken_span, self._on_dropped)
        self._out: list[str] = []
        self._emitted_count = 0
        self._finished = False

    def feed(self, piece: str) -> list[str]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        for ch in piece:
            self._filter.push(ch)
        if self.config.eager_ends and not self._filter.holding and eager_end(self._buffer, self._quotes):
            self._decide_boundary_before(" ")
        out, self._out = self._out, []
        return out

    def finish(self, *, drop_incomplete: bool = False) -> list[str]:
        """Flush the tail. With `drop_incomplete` (the LLM hit its token limit), a tail that is
        not a complete sentence is dropped, unless it is all there is."""
        self._filter.flush()
        self._finished = True
        tail = self._buffer.strip()
        self._set_buffer("")
        if tail and not (drop_incomplete and self._emitted_count and not ends_sentence(tail)):
            self._emit(tail)
        out, self._out = self._out, []
        return out

    def cut_early(self, *, at_words: bool = False) -> list[str]:
        """Emit the buffered text up to its last comma-like break now, before its sentence ends
        (with `at_words`, up to its last word boundary if it has no such break): the listener is
        about to run out of audio. The one decision that depends on timing, not on the text."""
        if self._finished or self._filter.holding:
            return []
        text = self._buffer
        cut = self._lastsoft_break(text)
        if cut is None and at_words and self._weight >= self.config.min_weight:
            cut = _last_word_boundary(text)
        if cut:
            self._emit_head(cut)
        out, self._out = self._out, []
        return out

    def _on_dropped(self, span: str) -> None:
        """A style tag ends the sentence before it (whatever its length) and styles what follows."""
        style = style_tag(span)
        if style not in self._styles or style == self.style:
            return
        if is_speakable(self._buffer):
            self._emit_head()
        self.style = style

    def _push_spoken(self, ch: str) -> None:
        if ch.isspace() and self._buffer[-1:].isspace():
            # A run of spaces is said as one (tidy() joins it anyway): kept whole, a buffer of
            # nothing but whitespace grew without bound and each character rescanned it.
            if ch == "\n" and self._buffer[-1] != "\n":
                self._buffer = self._buffer[:-1] + ch
            return
        self._decide_boundary_before(ch)
        self._buffer += ch
        was_long = self._weight > self.config.max_weight
        self._weight += speech_weight(ch)
        if ch in QUOTE_PAIRS or ch in QUOTE_PAIRS.values() or ch == '"':
            self._quotes[ch] += 1
        if self._weight > self.config.max_weight and (not was_long or self._may_cut_now()):
            self._cut_long_run()

    def _may_cut_now(self) -> bool:
        """Whether a run already too long (and found with no place to cut) may have gained one
        with its last character (a break or a space before it, or CJK text, whose words need no
        spaces), or must be cut anyway. Not retrying after every character keeps one long
        "word" linear, not quadratic."""
        before = self._buffer[-2:-1]
        return (
            before.isspace() or is_cjk(self._buffer[-1]) or self._weight > 2 * self.config.max_weight
            or (before in SOFT_BREAKS and soft_break(self._buffer[:-1], self._buffer[-1]))
        )

    def _decide_boundary_before(self, next_ch: str) -> None:
        """A sentence ending at the buffer's end is only certain once the next character is
        known (more "!!!", a closing quote, or the digit of "3.14" may follow)."""
        if next_ch in SENTENCE_ENDS or next_ch in CLOSERS or not self._buffer:
            return
        candidate = self._buffer
        first = self._emitted_count == 0
        if ends_sentence(candidate, next_ch):
            minimum = self.config.first_min_weight if first else self.config.min_weight
        elif first and self.config.first_cut_at_soft_break and soft_break(candidate, next_ch):
            minimum = self.config.first_soft_break_min_weight
        else:
            return
        if self._weight >= minimum and is_speakable(candidate):
            self._emit_head()

    def _cut_long_run(self) -> None:
        text = self._buffer
        cut = self._lastsoft_break(text) or _last_word_boundary(text)
        if not cut and speech_weight(text) > 2 * self.config.max_weight:
            cut = len(text)  # one endless "word" (a URL, a key mash): no boundary to respect
        if cut:
            self._emit_head(cut)

    def _emit_head(self, cut: int | None = None) -> None:
        """Emit the buffer up to `cut` (all of it by default) as a sentence; keep the rest."""
        text = self._buffer
        cut = len(text) if cut is None else cut
        self._set_buffer(text[cut:])
        self._emit(text[:cut])

    def _set_buffer(self, text: str) -> None:
        self._buffer, self._weight = text, speech_weight(text)

    def _lastsoft_break(self, text: str) -> int | None:
        head_weight = speech_weight(text)  # of text[:index], kept from the back (no rescan per comma)
        for index in range(len(text) - 1, 0, -1):
            head_weight -= speech_weight(text[index])
            if head_weight < self.config.min_weight:
                return None
            if text[index - 1] in SOFT_BREAKS and soft_break(text[:index], text[index]):
                return index
        return None

    def _emit(self, sentence: str) -> None:
        if self.config.spell_symbols:
            sentence = spell_symbols(sentence)
        sentence = tidy(sentence)
        if sentence:
            self._out.append(Sentence(sentence, self.style))
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
    inner = [offset for offset in offsets[:-1] if offset > 0 and not cuts_number(text, offset)]
    return inner[-1] if inner else None
