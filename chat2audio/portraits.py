"""Character portraits: `speakers/<id>.png|jpg|jpeg|webp`, beside the speaker file.

Only a known speaker's id is ever joined to the speakers dir (ids are letters, digits, '_' and
'-'), a link that leads outside that dir is refused, and a file is served only if its first bytes
are the image its name claims, under that type: a text file renamed `.png` is not a portrait."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_PORTRAIT_BYTES = 2 * 1024 * 1024

# suffix → (media type, whether the first bytes are that image)
_IMAGE_TYPES = {
    ".png": ("image/png", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    ".jpg": ("image/jpeg", lambda head: head.startswith(b"\xff\xd8\xff")),
    ".jpeg": ("image/jpeg", lambda head: head.startswith(b"\xff\xd8\xff")),
    ".webp": ("image/webp", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
}


@dataclass(frozen=True)
class Portrait:
    path: Path
    media_type: str


def find_portrait(speakers_dir: Path, speaker_id: str) -> Portrait | None:
    """The speaker's portrait, if it has one that may be served."""
    root = speakers_dir.resolve()
    for suffix, (media_type, looks_right) in _IMAGE_TYPES.items():
        path = speakers_dir / f"{speaker_id}{suffix}"
        try:
            if not path.is_file() or not path.resolve().is_relative_to(root):
                continue
            if path.stat().st_size > MAX_PORTRAIT_BYTES:
                continue
            with path.open("rb") as file:
                head = file.read(12)
        except OSError:
            continue
        if looks_right(head):
            return Portrait(path, media_type)
    return None
