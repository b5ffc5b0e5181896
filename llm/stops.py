"""Stop strings for backends that generate the text themselves: a reply's text is released as it
grows, except what could still turn out to be the start of a stop string (or of a character)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class StopStrings:
    """Follows one reply's text as it grows and says how much of it may be sent.

    A stop string may arrive split over several tokens ("<|" then "end|>"), so a tail of the text
    that is the start of some stop string is held back until the next text shows whether it is
    one. The stop string and what follows it are never released. Each new character costs about
    one step per stop string, however long the stop strings (this runs on the batch thread, and
    a client chooses them)."""

    def __init__(self, stops: Iterable[str]) -> None:
        self._matchers = [_Matcher(stop) for stop in dict.fromkeys(stops) if stop]  # "" would stop at once
        self._scanned = 0
        self._found_at: int | None = None

    @property
    def stopped(self) -> bool:
        return self._found_at is not None

    def releasable(self, text: str, sent: int) -> int:
        """How many characters of `text` (the reply so far, which only grows) may be sent; never
        fewer than `sent`. Once `text` holds a stop string, `stopped` is set and that string's
        start is the end of the reply."""
        if not self._matchers:
            return len(text)
        while self._found_at is None and self._scanned < len(text):
            char = text[self._scanned]
            self._scanned += 1
            for matcher in self._matchers:
                if matcher.feed(char):
                    self._found_at = self._scanned - len(matcher.stop)
                    break
        if self._found_at is not None:
            return max(sent, self._found_at)
        held = max(matcher.matched for matcher in self._matchers)
        return max(sent, len(text) - held)


class ReplyText:
    """One reply's text as its tokens arrive, and what of it may be sent now. tokenizers'
    `DecodeStream` turns each token into the text it completes (nothing while a character is
    still being built from several tokens); what could be the start of a stop string is held back
    until the next token shows, or the reply's last. (A tokenizer without a `tokenizers` backend,
    some remote-code ones, has the reply decoded again per token instead.)"""

    def __init__(self, tokenizer: Any, stops: Iterable[str]) -> None:
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = DecodeStream(skip_special_tokens=True)
        self._tokens: list[int] = []
        self._stops = StopStrings(stops)
        self._text = ""
        self._sent = 0

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def add(self, tokens: Iterable[int], *, last: bool = False) -> str:
        """The text to send now that `tokens` came; with `last`, all that is left before any
        stop string."""
        for token in tokens:
            self._tokens.append(token)
            if self._backend is not None:
                self._text += self._stream.step(self._backend, token) or ""
            else:
                self._text = self._decoded()
        if last and self._backend is not None:
            # A token can finish one character and start another: `DecodeStream` holds both until
            # the next token. A reply cut there (its token limit) still says the finished one.
            whole = self._decoded()
            if len(whole) > len(self._text) and whole.startswith(self._text):
                self._text = whole
        end = self._stops.releasable(self._text, self._sent)
        if last and not self._stops.stopped:
            end = len(self._text)  # a tail that looked like a stop string's start is text after all
        piece = self._text[self._sent : end]
        self._sent = max(self._sent, end)
        return piece


    def _decoded(self) -> str:
        """The whole reply decoded, less the bytes of a character still unfinished."""
        return self._tokenizer.decode(self._tokens, skip_special_tokens=True).rstrip("\ufffd")


class _Matcher:
    """How much of one stop string the text ends with (Knuth-Morris-Pratt: after a mismatch, fall
    back to the longest start of the stop string that is also the end of what matched)."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.matched = 0
        self._fallback = [0] * len(stop)
        length = 0
        for i in range(1, len(stop)):
            while length and stop[i] != stop[length]:
                length = self._fallback[length - 1]
            if stop[i] == stop[length]:
                length += 1
            self._fallback[i] = length

    def feed(self, char: str) -> bool:
        """Take the text's next character; True once the text ends with the whole stop string."""
        while self.matched and self.stop[self.matched] != char:
            self.matched = self._fallback[self.matched - 1]
        if self.stop[self.matched] == char:
            self.matched += 1
        return self.matched == len(self.stop)
