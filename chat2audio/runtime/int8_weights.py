"""Weight-only int8 linear layers for decoding on a CPU, shared by the LLM and the GPT-SoVITS GPT.

A decode step on a CPU reads every weight once for a handful of rows, so its speed is the memory
it reads: int8 weights read a quarter of fp32's. They are weight-only int8 (a scale per output
channel; activations stay floating point), never dynamic quantization, whose activation scale is
taken over the whole batch: there, one reply's numbers would depend on whoever else is decoding.
Prompts (many rows at once) are compute, not memory, and take a bf16 copy of the same weights.
Both paths compute in bf16, which only CPUs with AVX512-BF16 or AMX do natively.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cpu_supports_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


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
    """The Int8Linear module class (built on first use, so that importing this module needs no torch)."""
    import torch

    class Int8Linear(torch.nn.Module):
        """A linear layer with int8 weights and a bf16 scale per output channel.

        A decode step's few rows go through PyTorch's int8-weight kernel (`_weight_int8pack_mm`,
        what torchao's int8 weight-only mode calls on CPU; called directly here because the tensor
        subclass around it costs more per call than the kernel itself at this size). That kernel's
        cost grows with every row, so a prompt multiplies bf16 weights instead, with oneDNN, as a
        bf16 layer would; the two copies together are still 0.75 × fp32's memory. Either way each
        row's result depends on that row alone.

        Which path a call takes must not depend on how many others decode beside it, or a reply's
        numbers would: `uses_kernel` decides from the call alone (here its row count, within what
        one batch may hold; `int8_decode_linear_class` from what its caller says).
        """

        # Every GPT-SoVITS decode step takes the int8 kernel however many sentences decode
        # together (its batch setting allows 64); a prompt (a reference clip's tokens and
        # phonemes: well over 64 rows) takes bf16 weights.
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

        def uses_kernel(self, x: Any, rows: int) -> bool:
            return rows <= self.MAX_KERNEL_ROWS

        def forward(self, x: Any) -> Any:
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
            if self.uses_kernel(x, rows.shape[0]):
                out = torch._weight_int8pack_mm(rows, self.weight, self.scales)
            else:
                out = torch.nn.functional.linear(rows, self.dense_weight)
            if self.bias is None:
                out = out.to(x.dtype)
            elif self.bias.dtype == x.dtype:
                out = torch.add(self.bias, out)  # back to x's dtype in the addition: one operation, not two
            else:
                out = out.to(x.dtype) + self.bias
            return out.reshape(*x.shape[:-1], self.out_features)

    return Int8Linear


_path = threading.local()


@contextmanager
def decode_steps(decoding: bool = True) -> Iterator[None]:
    """Int8DecodeLinear layers called in this block (on this thread) take the int8 kernel if
    `decoding`, else the bf16 copy, whatever the calls' shapes."""
    before = getattr(_path, "decoding", None)
    _path.decoding = decoding
    try:
        yield
    finally:
        _path.decoding = before


@functools.cache
def int8_decode_linear_class() -> type:
    """Int8Linear for a causal LM: a decode step (one token per row, however many rows) takes the
    int8 kernel, a prompt pass the bf16 copy. A caller that knows which says so (`decode_steps`);
    otherwise (transformers' `generate()`) a one-token call is a decode step. The batcher says so
    because a one-token prompt pass (a prompt whose start another reply's cache holds) must compute
    as the same prompt's longer pass would: a seeded reply is the same whoever shares its batch."""

    class Int8DecodeLinear(int8_linear_class()):
        def uses_kernel(self, x: Any, rows: int) -> bool:
            decoding = getattr(_path, "decoding", None)
            return x.dim() >= 2 and x.shape[-2] == 1 if decoding is None else decoding

    return Int8DecodeLinear
