"""`tts.gpt_sovits.decode_step`: the CPU decode step gives gsv_tts' numbers to the bit, with the
same effects on the KV cache, in every precision the CPU path uses, for one row and for several
rows of different lengths."""

from __future__ import annotations

import copy

import pytest
import torch

from tts.gpt_sovits import precision
from tts.gpt_sovits.decode_step import decode_next_token
from tts.gpt_sovits.engine import use_fast_cpu_attention
from tts.gpt_sovits.process import prepare_process_for_gsv_tts

LAYERS, WIDTH, HEADS, CONTEXT = 3, 64, 4, 40


def gsv_transformer(conversion: str):
    """A random T2STransformer of gsv_tts' own classes, converted as the engine converts the GPT."""
    prepare_process_for_gsv_tts()
    from gsv_tts.GPT_SoVITS.GPT.t2s_model import T2SBlock, T2STransformer

    use_fast_cpu_attention()  # what the engine sets on a CPU, so gsv_tts' step uses the same attention kernel
    torch.manual_seed(0)
    transformer = T2STransformer(LAYERS, [T2SBlock(WIDTH, HEADS) for _ in range(LAYERS)]).eval()
    if conversion != "fp32":
        carrier = type("T2S", (), {"t2s_transformer": transformer})()
        precision.convert_gpt(carrier, conversion)
    return transformer


def filled_cache(rows: int, lengths: list[int], dtype):
    generator = torch.Generator().manual_seed(1)
    shape = (LAYERS, rows, HEADS, CONTEXT, WIDTH // HEADS)
    k, v = (torch.randn(shape, generator=generator).to(dtype) for _ in range(2))
    mask = torch.zeros((rows, 1, 1, CONTEXT), dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, ..., : length + 1] = True  # its prompt, and the position of the token it adds now
    return k, v, mask


@pytest.mark.parametrize(
    "conversion",
    [
        "fp32",
        pytest.param("int8", marks=pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="no native bf16")),
        pytest.param("bf16", marks=pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="no native bf16")),
    ],
)
@pytest.mark.parametrize("lengths", [[17], [17, 5, 30]])
def test_the_cpu_step_is_gsv_tts_step_to_the_bit(conversion, lengths):
    transformer = gsv_transformer(conversion)
    dtype = getattr(transformer, "kv_dtype", torch.float32)  # the cache's dtype, as kv_cache_dtype gives it
    rows = len(lengths)
    k, v, mask = filled_cache(rows, lengths, dtype)
    x = torch.randn(rows, 1, WIDTH, generator=torch.Generator().manual_seed(2))
    theirs = {"k": k.clone(), "v": v.clone(), "lengths": torch.tensor(lengths)}
    ours = copy.deepcopy(theirs)
    index = torch.arange(rows)

    with torch.inference_mode():
        expected = transformer.decode_next_token(x, theirs["k"], theirs["v"], theirs["lengths"], mask, index)
        got = decode_next_token(transformer, x, ours["k"], ours["v"], ours["lengths"], mask, index)

    assert got.dtype == expected.dtype == torch.float32
    assert torch.equal(got, expected)
    for name in ("k", "v", "lengths"):
        assert torch.equal(ours[name], theirs[name]), name
    assert ours["lengths"].tolist() == [length + 1 for length in lengths]
    # Each row's new key went where its length said, and nowhere else changed.
    changed = (ours["k"] != k).any(dim=(0, 2, 4))
    assert changed.nonzero().tolist() == [[row, length] for row, length in enumerate(lengths)]
