"""Which precision each GPT-SoVITS model runs in (`CHAT2AUDIO_TTS_PRECISION`), and the conversions.

On a CPU the GPT's decode step reads every weight once per 40 ms of speech, so its speed is the
memory it reads: int8 weights read a quarter of fp32's. They are weight-only int8 (a scale per
output channel; activations stay floating point), never dynamic quantization, whose activation scale
is taken over the whole batch: there, a sentence's numbers would depend on whoever else is decoding.
The BERT runs once per sentence on the critical path, on every character of it at once: compute,
not memory, bounds it, so it runs in bf16, as does the SoVITS vocoder (convolutions), on CPUs that
compute bf16 natively (AVX512-BF16 or AMX). GPUs keep what gsv_tts does there: fp16 everywhere. `bench/RESULTS.md` has the measurements
and the fidelity figures behind `auto`; tests/tts/gpt_sovits/test_precision.py asserts their bounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from chat2audio.runtime.int8_weights import cpu_supports_bf16, int8_linear_class, replace_linear_layers

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")


class PrecisionUnavailable(ValueError):
    """The precision asked for does not run on this device."""


@dataclass(frozen=True)
class PrecisionPlan:
    """The precision of each model: `gpt` (its transformer layers), `bert`, `vocoder` (SoVITS' decoder)."""

    gpt: str
    bert: str
    vocoder: str
    dtype: str  # what gsv_tts loads every model in before any conversion: "float32" or "float16"

    def describe(self) -> str:
        if len({self.gpt, self.bert, self.vocoder}) == 1:
            return self.gpt
        return f"GPT {self.gpt}, BERT {self.bert}, vocoder {self.vocoder}"


def plan_precision(setting: str, device: str) -> PrecisionPlan:
    """What `setting` means on `device` ("cpu", "cuda", "cuda:N")."""
    if setting not in PRECISIONS:
        raise PrecisionUnavailable(f"unknown TTS precision {setting!r}; one of {', '.join(PRECISIONS)}")
    on_gpu = device.startswith("cuda")
    if on_gpu:
        if setting == "int8":
            raise PrecisionUnavailable("int8 TTS weights are for CPUs; on a GPU use fp16 (or auto)")
        if setting in ("auto", "fp16"):
            return PrecisionPlan("fp16", "fp16", "fp16", dtype="float16")
        if setting == "bf16":
            return PrecisionPlan("bf16", "bf16", "bf16", dtype="float32")
        return PrecisionPlan("fp32", "fp32", "fp32", dtype="float32")
    if setting == "fp16":
        raise PrecisionUnavailable("fp16 TTS weights are for GPUs; on a CPU use int8, bf16 or auto")
    if setting == "fp32":
        return PrecisionPlan("fp32", "fp32", "fp32", dtype="float32")
    if not cpu_supports_bf16():
        if setting == "auto":  # both reduced precisions compute in bf16; emulated bf16 is slow (and unmeasured)
            return PrecisionPlan("fp32", "fp32", "fp32", dtype="float32")
        raise PrecisionUnavailable(f"{setting} TTS weights compute in bf16, which this CPU lacks (AVX512-BF16 or AMX)")
    # The BERT reads a whole sentence at once: many rows, where bf16 is faster than int8 weights
    # (and closer to fp32), so "int8" applies to the GPT's decode steps only.
    if setting == "auto":
        return PrecisionPlan("int8", "bf16", "bf16", dtype="float32")
    if setting == "int8":
        return PrecisionPlan("int8", "bf16", "fp32", dtype="float32")
    return PrecisionPlan("bf16", "bf16", "bf16", dtype="float32")


# -- conversions (on the engine's worker thread, right after gsv_tts loads a model) ---------------


def convert_gpt(t2s_model: Any, precision: str) -> None:
    """Convert the GPT's transformer layers in place. Embeddings and the output layer stay as they
    are: they are small, and the sampler reads the logits."""
    import torch

    transformer = t2s_model.t2s_transformer
    if precision == "int8":
        replace_linear_layers(transformer, int8_linear_class().from_linear)
    elif precision == "bf16":
        transformer.to(torch.bfloat16)
        _cast_calls(transformer, ("process_prompt", "decode_next_token"), torch.bfloat16)
        transformer.kv_dtype = torch.bfloat16  # its layers' activations: what kv_cache_dtype reads


def kv_cache_dtype(t2s_model: Any) -> Any:
    """The dtype the GPT's KV cache must have (its layers' activations)."""
    return getattr(t2s_model.t2s_transformer, "kv_dtype", t2s_model.ar_predict_layer.weight.dtype)


def convert_bert(bert_model: Any, precision: str) -> None:
    """Convert an HF BERT in place."""
    import torch

    if precision == "bf16":
        bert_model.to(torch.bfloat16)
        forward = bert_model.forward

        def forward_in_bf16(*args: Any, **kwargs: Any) -> Any:
            result = forward(*args, **kwargs)
            result["hidden_states"] = tuple(state.float() for state in result["hidden_states"])
            return result

        bert_model.forward = forward_in_bf16


def convert_vocoder(vq_model: Any, precision: str) -> None:
    """Convert SoVITS' waveform decoder (`dec`, the HiFi-GAN generator: nearly all of the vocoder's
    compute) in place; the text encoder and flow, cheap and sensitive, stay in their dtype."""
    import torch

    if precision == "bf16":
        vq_model.dec.to(torch.bfloat16)
        _cast_calls(vq_model.dec, ("forward",), torch.bfloat16)


def _cast_calls(module: Any, names: tuple[str, ...], dtype: Any) -> None:
    """Make `module.<name>(x, ...)` take and return float32: the floating tensors going in are cast to
    `dtype` (the module's), the tensor coming out back to float32, so callers need not know."""
    import torch

    def cast(value: Any) -> Any:
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    for name in names:
        method = getattr(module, name)

        def in_dtype(*args: Any, _method=method, **kwargs: Any) -> Any:
            out = _method(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})
            return out.float()

        setattr(module, name, in_dtype)
