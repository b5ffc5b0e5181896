"""Stop strings for backends that generate the text themselves: a reply's text is released as it
grows, except what could still turn out to be the start of a stop string."""

from __future__ import annotations

from collections.abc import Iterable


class StopStrings:
    """Follows one reply's whole text so far and says how much of it may be sent.

    A stop string may arrive split over several tokens ("<|" then "end|>"), so a tail of the text
    that is the start of some stop string is held back until the next text shows whether it is
    one. The stop string and what follows it are never released."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)  # "" would stop before the first word
        self._longest = max((len(stop) for stop in self.stops), default=0)
        self.stopped = False

    def releasable(self, text: str, sent: int) -> int:
        """How many characters of `text` may be sent (never fewer than `sent`); sets `stopped`
        when `text` holds a stop string, which then ends the reply."""
        if not self.stops:
            return len(text)
        # A stop string not found before can only end in the newly added text.
        search_from = max(0, sent - self._longest + 1)
        found = [index for stop in self.stops if (index := text.find(stop, search_from)) >= 0]
        if found:
            self.stopped = True
            return max(sent, min(found))
        return max(sent, len(text) - self._held_back(text))

    def _held_back(self, text: str) -> int:
        """The length of the longest tail of `text` that some stop string starts with."""
        for length in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self.stops):
                return length
        return 0
