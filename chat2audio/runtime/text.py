"""Text measures shared by the splitter above and the engines below: one rule for what is
speakable, one for how long text takes to say."""

from __future__ import annotations


def is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0xAC00 <= code <= 0xD7AF


def speech_weight(text: str) -> int:
    """Rough spoken length: a CJK character says about as much as three Latin letters."""
    return sum(3 if is_cjk(ch) else 1 for ch in text if not ch.isspace())


def is_speakable(text: str) -> bool:
    """True when the text holds at least one letter or digit a TTS engine can say."""
    return any(ch.isalnum() for ch in text)
