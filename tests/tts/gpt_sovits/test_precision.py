"""Reduced precision on the CPU: what each setting means, and that it stays faithful to fp32.

The fidelity bounds are checked on the full-size random-weight voice (the released shapes), where
rounding accumulates as it does in a real voice; measured there (bench/RESULTS.md, `python -m
bench.tts_fidelity`): GPT logits 1.0 % relative error (max over steps), top-15 overlap 0.988, KL
1e-5 nats; BERT features 1.4 %; vocoder SNR 42 dB. The bounds below leave room for other CPUs'
kernels (several times these figures), and no more: a 30 dB SNR is noise at a thousandth of the signal's power, below the
vocoder's own sampling noise (noise_scale 0.5), and a top-15 overlap of 0.9 means sampling draws
from nearly the same candidates.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.fixtures.full_gpt_sovits import full_size_models, full_voice
from tests.fixtures.tts_fidelity import measure_fidelity, started_engines
from tts.gpt_sovits import precision
from tts.gpt_sovits.precision import PrecisionUnavailable, plan_precision

needs_bf16 = pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="this CPU has no native bf16")


def test_auto_is_int8_and_bf16_on_a_cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    plan = plan_precision("auto", "cpu")
    assert (plan.gpt, plan.bert, plan.vocoder, plan.dtype) == ("int8", "bf16", "bf16", "float32")


def test_auto_stays_fp32_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert plan_precision("auto", "cpu").describe() == "fp32"
    with pytest.raises(PrecisionUnavailable, match="bf16"):
        plan_precision("bf16", "cpu")
    with pytest.raises(PrecisionUnavailable, match="bf16"):
        plan_precision("int8", "cpu")


def test_gpus_keep_fp16_and_refuse_int8():
    assert plan_precision("auto", "cuda").describe() == "fp16"
    assert plan_precision("auto", "cuda:1").dtype == "float16"
    with pytest.raises(PrecisionUnavailable, match="GPU"):
        plan_precision("int8", "cuda")
    with pytest.raises(PrecisionUnavailable, match="CPU"):
        plan_precision("fp16", "cpu")


@needs_bf16
@pytest.mark.parametrize("rows", [2, 8, 64])
def test_int8_linear_rows_do_not_depend_on_each_other(rows):
    """A sentence's numbers must not depend on who else is decoding: dynamic quantization's would
    (its activation scale is the whole batch's), so a loud row there costs the others precision."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 1536)
    int8 = precision.int8_linear_class().from_linear(linear)
    quiet = torch.randn(rows, 1, 512)
    with_a_loud_row = quiet.clone()
    with_a_loud_row[-1] *= 100
    with torch.inference_mode():
        beside_quiet, beside_loud = int8(quiet), int8(with_a_loud_row)
        alone = torch.cat([int8(row.unsqueeze(0)) for row in quiet])
        exact = linear(quiet)
    torch.testing.assert_close(beside_loud[:-1], beside_quiet[:-1], rtol=0, atol=0)

    def relative(a, b):
        return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()

    # However many decode together (up to the 64 the settings allow), a row comes out as alone.
    assert relative(beside_quiet, alone) < 1e-6
    assert relative(beside_quiet, exact) < 0.01


@pytest.fixture(scope="module")
def full_size_engines():
    engines = started_engines(full_size_models(), ("fp32", "auto"))
    yield engines
    for engine in engines:
        asyncio.run(engine.stop())


@needs_bf16
def test_auto_precision_is_faithful_to_fp32_on_a_full_size_voice(full_size_engines):
    reference, reduced = full_size_engines
    assert reduced.precision.describe() == "GPT int8, BERT bf16, vocoder bf16"
    fidelity = measure_fidelity(reference, reduced, full_voice())
    assert fidelity.logits_rel_error_max < 0.05
    assert fidelity.top_k_overlap_mean > 0.9
    assert fidelity.kl_mean < 1e-3
    assert fidelity.bert_rel_error_max < 0.05
    assert fidelity.vocoder_snr_db_min > 30
    # fp32 against itself is exact: the measurement itself adds nothing.
    same = measure_fidelity(reference, reference, full_voice())
    assert same.logits_rel_error_max == 0 and same.vocoder_snr_db_min == float("inf")
