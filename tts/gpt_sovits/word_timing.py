"""When each word of a sentence is heard, from the SoVITS text-to-audio attention.

The vocoder's cross-attention says which phoneme each 20 ms frame of audio reads; a monotonic path
through it (`monotonic_alignment`, gsv_tts' `_viterbi_monotonic` in numpy: the same path, without
torch's per-op overhead in its frame loop) gives each phoneme's frames, and `word2ph` each word's
phonemes. Words are the g2p's (one character for Chinese), spelled as the sentence writes them
(as gsv_tts' `sub2text_index` maps them); punctuation, which is silence, has no entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tts.base import WordTiming


def monotonic_alignment(attention: Any) -> np.ndarray:
    """Each frame's phoneme index (-1 before the speech starts) from the attention [heads, frames,
    phonemes]: gsv_tts' `_viterbi_monotonic`, computed alike (float32) in numpy."""
    weights = np.asarray(attention, dtype=np.float32)
    _, frames, phonemes = weights.shape
    if frames == 0 or phonemes < 2:
        return np.zeros(frames, dtype=np.int64)
    # Frames whose head looks at the last phoneme (the padding-like end) say nothing: averaged out.
    reading = weights.argmax(-1) != phonemes - 1
    summed = (weights * reading[..., None]).sum(0)
    count = reading.sum(0)[:, None].astype(np.float32)
    default = np.full((frames, phonemes), 1.0 / phonemes, dtype=np.float32)
    default[:, phonemes - 1] = 0.9 / phonemes
    default[:, 1] = 1.1 / phonemes
    default /= default.sum(-1, keepdims=True)
    scores = np.where(count > 0, summed / (count + np.float32(1e-9)), default)
    at_first = scores.argmax(-1) == 0
    speech_starts = int(at_first.argmax()) if at_first.any() else 0

    moved = np.zeros((frames, phonemes), dtype=bool)  # frame t entered its phoneme from the one before
    best = scores[0].copy()
    shifted = np.empty(phonemes, dtype=np.float32)
    shifted[0] = -np.inf
    for t in range(1, frames):
        shifted[1:] = best[:-1]
        step = shifted > best  # ties stay, as torch.max picks the first of equals
        moved[t] = step
        best = scores[t] + np.where(step, shifted, best)
    path = np.empty(frames, dtype=np.int64)
    phoneme = int(best.argmax())
    moved_rows = moved.tolist()
    for t in range(frames - 1, -1, -1):
        path[t] = phoneme
        phoneme -= moved_rows[t][phoneme]
    path[:speech_starts] = -1
    return path


@dataclass
class SentenceWords:
    """A sentence's spoken words and their phonemes, and how many were told to the listener."""

    texts: list[str]  # as the sentence writes them
    first_phone: np.ndarray  # each word's first phoneme index
    end_phone: np.ndarray  # one past each word's last phoneme
    told: int = 0  # words yielded so far
    told_until_s: float = 0.0  # where the last yielded word ends
    head_s: float = 0.0  # audio trimmed off the sentence's head, in seconds

    @classmethod
    def build(cls, text: str, word2ph: dict, norm_text: str, phonemes: int) -> SentenceWords | None:
        """The words of `text` (what was phonemized) from the g2p's `word2ph` and normalised text;
        None where they do not account for the `phonemes` (no made-up timings)."""
        words, counts = list(word2ph.get("word", ())), [int(count) for count in word2ph.get("ph", ())]
        if not words or len(words) != len(counts) or sum(counts) != phonemes:
            return None
        ends = np.cumsum(counts)
        spans = _spans_in_text(words, norm_text, text)
        entries: list[list[Any]] = []  # [as written, text start, text end, first phoneme, end phoneme]
        for index, (first, last) in enumerate(zip((ends - counts).tolist(), ends.tolist())):
            start, end = spans[index] if spans else (-1, -1)
            written = text[start:end] if spans else words[index]
            if not _spoken(written):
                continue
            if spans and entries and start < entries[-1][2]:  # one written word read as several (12 → 十二)
                entries[-1][2], entries[-1][4] = max(entries[-1][2], end), last
                entries[-1][0] = text[entries[-1][1] : entries[-1][2]]
            else:
                entries.append([written, start, end, first, last])
        texts = [_strip(entry[0]) for entry in entries]
        keep = [index for index, word in enumerate(texts) if word]
        if not keep:
            return None
        return cls(
            texts=[texts[i] for i in keep],
            first_phone=np.array([entries[i][3] for i in keep]),
            end_phone=np.array([entries[i][4] for i in keep]),
        )

    def heard(
        self, path: np.ndarray, *, frame_s: float, heard_frames: int, final: bool, audio_s: float
    ) -> tuple[WordTiming, ...]:
        """The words not yet told that `path` (each frame's phoneme) shows complete within the
        first `heard_frames` frames (all of them when `final`), timed from the sentence's first
        sample: `head_s` trimmed, inside [0, `audio_s`] and after the words already told."""
        starts = np.searchsorted(path, self.first_phone, side="left")
        ends = np.searchsorted(path, self.end_phone, side="left")
        count = len(self.texts) if final else int((ends < heard_frames).sum())  # the next phoneme has begun
        words = []
        for index in range(self.told, count):
            start = min(max(float(starts[index]) * frame_s - self.head_s, self.told_until_s), audio_s)
            end = min(max(float(ends[index]) * frame_s - self.head_s, start), audio_s)
            words.append(WordTiming(self.texts[index], start, end))
            self.told_until_s = words[-1].end_s
        self.told = max(self.told, count)
        return tuple(words)


def _spoken(text: str) -> bool:
    return any(character.isalnum() for character in text)


def _strip(text: str) -> str:
    """A word without the punctuation and spaces around it."""
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


def _spans_in_text(words: list[str], norm_text: str, text: str) -> list[tuple[int, int]] | None:
    """Where each g2p word is written in `text` ([start, end)), as gsv_tts' `sub2text_index` maps
    them (which finds a repeated word at its first place: 看看 would be one 看 twice); None where
    the words cannot be placed (then the normalised words are used)."""
    from gsv_tts.TextProcessor import LIS_mapping, linear_interpolate, split_text

    in_norm, position = [], 0
    for word in words:
        found = norm_text.find(word, position) if word else -1
        if found < 0:
            return None
        position = found + len(word)
        in_norm.append((found, position))
    written, normalised = split_text(text), split_text(norm_text)
    offsets = np.cumsum([0, *(len(piece) for piece in written)]).tolist()
    matches = LIS_mapping([[i for i, piece in enumerate(written) if piece == norm] for norm in normalised])
    norm_to_text: list[int] = []
    for piece, match in zip(normalised, matches):
        norm_to_text += [-1] * len(piece) if match == -1 else range(offsets[match], offsets[match] + len(piece))
    norm_to_text = linear_interpolate(norm_to_text)
    spans = [(norm_to_text[start], norm_to_text[end - 1] + 1) for start, end in in_norm]
    if any(not 0 <= start < end <= len(text) for start, end in spans):
        return None
    return spans
