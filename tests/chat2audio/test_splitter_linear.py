"""The splitter and the speech filter take time linear in their input, whatever it holds
(issue 19, item 5: whitespace-only and markup-heavy buffers were quadratic, and 8 × 4,096
characters of markup stood the event loop still for 3 s)."""

from __future__ import annotations

import time

import pytest

from chat2audio.splitter import SentenceSplitter, speakable_text

N = 16384
ADVERSARIAL = {
    "spaces": " " * N,
    "newlines": "\n" * N,
    "open brackets": "(" * N,
    "open square brackets": "[" * N,
    "tags and stars": "<i>*(" * (N // 5),
    "spaced words": ("a" + " " * 50) * (N // 51),
    "one long word": "x" * N,
    "dashes": "-" * N,
    "open emphasis": ("*" + "x" * 20) * (N // 21),
    "digits": "1" * N,
    "dotted numbers": "1." * (N // 2),
    "comma numbers": "1,1" * (N // 3),
    "equals": "=" * N,
    "markup in brackets": "<i>*(" * (N // 5),
}


def split_all(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return splitter.feed(text) + splitter.finish()


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_text_is_split_and_filtered_in_linear_time(text):
    started = time.perf_counter()
    split_all(text)
    speakable_text(text)
    # Linear: ~0.05 s here; the quadratic paths took 5-15 s for this length.
    assert time.perf_counter() - started < 2.0


def test_runs_of_whitespace_are_spoken_as_one_space():
    assert split_all("Hello" + " " * 5000 + "there, my friend." + "\n" * 300 + "Next one here.") == [
        "Hello there, my friend.", "Next one here.",
    ]
    assert speakable_text("a" + " " * 5000 + ", b") == "a, b"


def test_a_given_up_span_is_read_again_as_text():
    # An opener that never closes within the span limit is spoken as text, brackets dropped;
    # the spans inside it still open (a tag is not spoken), also past the re-reading budget.
    assert split_all("(" * 400 + "Hello there.") == ["Hello there."]
    assert split_all("(a stage direction that never closes and goes on " + "and on " * 30 + "end") != []
    assert split_all("(<b>Hello there.") == ["Hello there."]
