"""The in-process LLM's int8 decode weights (CHAT2AUDIO_LLM_PRECISION): which layers and which calls
take them, what they change on the real embedded model, and where they are refused."""

from __future__ import annotations

import pytest
import torch

from chat2audio.runtime import int8_weights
from chat2audio.runtime.int8_weights import decode_steps, int8_decode_linear_class
from llm import transformers_backend
from llm.base import ChatMessage, GenerationOptions, LLMError
from llm.embedded import embedded_gguf_path
from llm.transformers_backend import TransformersBackend
from tests.llm.conftest import started

needs_bf16 = pytest.mark.skipif(not int8_weights.cpu_supports_bf16(), reason="this CPU has no native bf16")
GREEDY = GenerationOptions(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)


def test_auto_is_int8_on_a_cpu_with_bf16_and_as_loaded_elsewhere(monkeypatch):
    monkeypatch.setattr(transformers_backend, "cpu_supports_bf16", lambda: True)
    assert transformers_backend._weights_precision("auto", "cpu") == "int8"
    assert transformers_backend._weights_precision("auto", "cuda:0") == "fp32"  # CUDA keeps bf16/fp16 as loaded
    with pytest.raises(LLMError, match="GPU"):
        transformers_backend._weights_precision("int8", "cuda")
    monkeypatch.setattr(transformers_backend, "cpu_supports_bf16", lambda: False)
    assert transformers_backend._weights_precision("auto", "cpu") == "fp32"
    with pytest.raises(LLMError, match="bf16"):
        transformers_backend._weights_precision("int8", "cpu")


@needs_bf16
def test_decode_steps_take_the_int8_kernel_and_prompts_the_bf16_copy_whatever_their_shape(monkeypatch):
    torch.manual_seed(0)
    layer = int8_decode_linear_class().from_linear(torch.nn.Linear(64, 32))
    kernel_calls = []
    real_kernel = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: kernel_calls.append(1) or real_kernel(*a))
    one_token, prompt = torch.randn(3, 1, 64), torch.randn(1, 9, 64)
    with torch.inference_mode():
        layer(prompt)  # generate()'s prompt pass
        assert not kernel_calls
        layer(one_token)  # generate()'s decode step
        assert len(kernel_calls) == 1
        with decode_steps(False):  # the batcher's one-token prompt pass
            as_prompt = layer(one_token)
        assert len(kernel_calls) == 1
        with decode_steps():
            as_step = layer(one_token)
        assert len(kernel_calls) == 2
    # Both paths hold the same weights to within int8's rounding.
    assert ((as_prompt - as_step).norm() / as_step.norm()).item() < 0.02


@needs_bf16
@pytest.mark.parametrize("max_batch", [1, 4], ids=["one-at-a-time", "batched"])
async def test_auto_replies_with_int8_decode_weights(model_dir, tmp_path, max_batch):
    backend = await started(model_dir, tmp_path, max_batch=max_batch, precision="auto")
    try:
        decoder_layer = backend._model.get_decoder().layers[0]
        assert isinstance(decoder_layer.mlp.down_proj, int8_decode_linear_class())
        assert isinstance(backend._model.get_output_embeddings(), int8_decode_linear_class())
        assert backend._model.get_input_embeddings().weight.dtype == torch.float32
        assert "int8 decode weights" in backend.describe()
        pieces = [piece async for piece in backend.stream_chat([ChatMessage("user", "Hello there")], GREEDY)]
    finally:
        await backend.stop()
    assert pieces[-1].finish_reason == "length" and "".join(piece.text for piece in pieces)


@pytest.fixture(scope="module")
def embedded_models(tmp_path_factory):
    """The embedded SmolLM2 (its weights are Q4_1 to begin with) as loaded and with int8 decode weights."""
    cache = tmp_path_factory.mktemp("gguf")
    full = TransformersBackend(model_source=embedded_gguf_path(), cache_dir=cache, device="cpu", precision="fp32")
    full._load()
    int8 = TransformersBackend(model_source=embedded_gguf_path(), cache_dir=cache, device="cpu", precision="int8")
    int8._load()
    return full, int8


@needs_bf16
@pytest.mark.embedded
def test_int8_decode_weights_are_faithful_to_the_embedded_models_own(embedded_models):
    """Measured (SmolLM2-135M, two persona prompts, 48 greedy tokens each, teacher-forced): KL to
    the model's own next-token odds 5e-4 and 8e-4 after the prompt pass, 0.003 and 0.004 on average
    over the decode steps (at most 0.015), and the same most likely token at 46 and 47 of 48 steps
    (the others near-ties). The bounds leave about twice that for another CPU's rounding."""
    full, int8 = embedded_models
    tokenizer = full._tokenizer
    for persona, question in [("You are a sailor who tells stories.", "What do the sailors sing at night?"),
                              ("You are a patient guide.", "How should I spend a rainy day in town?")]:
        chat = [{"role": "system", "content": persona}, {"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = prompt["input_ids"]
        with torch.inference_mode():
            reply = full._model.generate(ids, max_new_tokens=48, do_sample=False)[:, ids.shape[1]:]
            expected = torch.cat([full._model(torch.cat([ids, reply], 1)).logits[:, ids.shape[1] - 1: -1]], 1)
            # int8: the prompt in one pass (bf16 weights), then one decode step per reply token.
            out = int8._model(ids, use_cache=True)
            got, cache = [out.logits[:, -1:]], out.past_key_values
            for token in reply[0, :-1]:
                out = int8._model(token.view(1, 1), past_key_values=cache, use_cache=True)
                got.append(out.logits[:, -1:])
                cache = out.past_key_values
        got = torch.cat(got, 1)
        full_log, int8_log = expected.log_softmax(-1), got.log_softmax(-1)
        kl = (full_log.exp() * (full_log - int8_log)).sum(-1)
        assert kl[0, 0].item() < 0.002  # the prompt pass
        assert kl.max().item() < 0.04 and kl.mean().item() < 0.008
        assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() >= 0.9
