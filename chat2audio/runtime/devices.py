"""Picks the torch device the in-process backends (LLM, STT, GPT-SoVITS TTS) load their models on.

`resolve_device` is the one device rule of the project: every backend calls it, none has its own.
"""

from __future__ import annotations


class DeviceUnavailable(RuntimeError):
    """The configured device cannot be used on this machine."""


def resolve_device(requested: str) -> str:
    """`requested` ("auto", "cpu", "cuda", "cuda:1", …) as a concrete torch device name.

    - "auto" is "cuda:0" when torch sees a CUDA device, else "cpu";
    - "cuda" is "cuda:0" (torch's current device until something calls `set_device`);
    - "cuda:N" and anything else ("cpu", …) are returned unchanged;
    - "cuda…" without a CUDA device raises `DeviceUnavailable`.

    CUDA devices are always named with their index. torch reads a bare "cuda" as "the current
    device", which is per thread and moved by `torch.cuda.set_device`; the backends load and run
    their models on worker threads, so a bare name could mean different GPUs at different times.
    Tensors also report the indexed form (`.device` is "cuda:0", and `torch.device("cuda") !=
    torch.device("cuda:0")`), so only that form compares equal to where a model's tensors are. And
    "cuda:N" is taken by every consumer: transformers' `.to()`, torch, and gsv_tts' `TTS(device=…)`
    (which wraps it in `torch.device` and looks at its `.type`).
    """
    import torch  # heavy: only once a local model is actually being loaded

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"CHAT2AUDIO_DEVICE={requested} but CUDA is not available")
    return "cuda:0" if requested == "cuda" else requested
