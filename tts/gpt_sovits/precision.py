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

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def cpu_supports_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


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


def replace_linear_layers(module: Any, convert: Any) -> None:
    """Replace every `nn.Linear` inside `module` by `convert(linear)`, in place."""
    import torch

    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, convert(child))
        else:
            replace_linear_layers(child, convert)


@functools.cache
def int8_linear_class() -> type:
    """The Int8Linear module class (built on first use: torch is imported by the engine's start)."""
    import torch

    class Int8Linear(torch.nn.Module):
        """A linear layer with int8 weights and a bf16 scale per output channel.

        A decode step's few rows go through PyTorch's int8-weight kernel (`_weight_int8pack_mm`,
        what torchao's int8 weight-only mode calls on CPU; called directly here because the tensor
        subclass around it costs more per call than the kernel itself at this size): it reads a
        quarter of fp32's bytes. That kernel's cost grows with every row, so many rows (a prompt)
        multiply bf16 weights instead, with oneDNN, as a bf16 layer would; the two copies together
        are still 0.75 × fp32's memory. Either way each row's result depends on that row alone.
        """

        # Every decode step takes the int8 kernel, however many sentences decode together (the
        # setting allows 64), so that how many there are never changes a sentence's numbers; a
        # prompt (a reference clip's tokens and phonemes: well over 64 rows) takes bf16 weights.
        MAX_KERNEL_ROWS = 64

        def __init__(self, weight: Any, scales: Any, dense_weight: Any, bias: Any) -> None:
            super().__init__()
            self.register_buffer("weight", weight)  # int8 [out, in]
            self.register_buffer("scales", scales)  # bf16 [out]
            self.register_buffer("dense_weight", dense_weight)  # bf16 [out, in]
            self.register_buffer("bias", bias)  # float32 [out] or None
            self.in_features, self.out_features = weight.shape[1], weight.shape[0]

        @classmethod
        def from_linear(cls, linear: Any) -> Any:
            weight = linear.weight.detach().float()
            scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            quantized = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
            bias = None if linear.bias is None else linear.bias.detach().float().clone()
            return cls(quantized.contiguous(), scales.to(torch.bfloat16), weight.to(torch.bfloat16), bias)

        def forward(self, x: Any) -> Any:
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
            if rows.shape[0] <= self.MAX_KERNEL_ROWS:
                out = torch._weight_int8pack_mm(rows, self.weight, self.scales)
            else:
                out = torch.nn.functional.linear(rows, self.dense_weight)
            out = out.to(x.dtype)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*x.shape[:-1], self.out_features)

    return Int8Linear


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
