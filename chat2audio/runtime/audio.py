"""The one rule for turning an engine's samples into audio everyone downstream can trust."""

from __future__ import annotations

import numpy as np


def clean_audio(samples: np.ndarray) -> np.ndarray:
    """float32 mono in [-1, 1]: NaN becomes silence, infinities and overshoot are clipped."""
    audio = np.nan_to_num(np.asarray(samples, dtype=np.float32).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(audio, -1.0, 1.0, out=audio)
