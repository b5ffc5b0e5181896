"""Picks the torch device the in-process backends load their models on."""

from __future__ import annotations


class DeviceUnavailable(RuntimeError):
    """The configured device cannot be used on this machine."""


def resolve_device(requested: str) -> str:
    """`requested` ("auto", "cpu", "cuda", "cuda:1", …) as a concrete torch device name."""
    import torch  # heavy: only once a local model is actually being loaded

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"CHAT2AUDIO_DEVICE={requested} but CUDA is not available")
    return requested
