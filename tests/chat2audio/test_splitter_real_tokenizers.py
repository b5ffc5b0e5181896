"""The splitter fed as an LLM feeds it: text cut where real tokenizers cut it, eager ends on.

Byte-level BPE tokenizers cut at dots ("docs" "." "python"), between "。" and "”", between the
two "…" of "……", after "?" in a URL. Whatever the cut, the sentences must be those of the
whole text, and those intended.
"""

from __future__ import annotations

import pytest

from chat2audio.splitter import SentenceSplitter
from tests.fixtures.tiny_qwen2 import PRETOKENIZE_REGEX, training_corpus

CASES = [
    (
        "Visit docs.python.org for the tutorial. Then open config.json in your editor.",
        ["Visit docs.python.org for the tutorial.", "Then open config.json in your editor."],
    ),
    ("他说：“你好呀。”然后就走了。", ["他说：“你好呀。”", "然后就走了。"]),
    ("她说：“今天天气很好！”我们就出门了。", ["她说：“今天天气很好！”", "我们就出门了。"]),
    ("我想想……也许明天再去吧。", ["我想想……", "也许明天再去吧。"]),
    ("我想想…………好吧，我们明天再去。", ["我想想…………", "好吧，我们明天再去。"]),
    (
        "We climbed Mt. Fuji on Jan. 5 with friends from the U.S. and Canada. It was great.",
        ["We climbed Mt. Fuji on Jan. 5 with friends from the U.S. and Canada.", "It was great."],
    ),
    (
        "Open https://example.com/search?q=1&lang=en to see it. Bye for now!",
        ["Open https://example.com/search?q=1&lang=en to see it.", "Bye for now!"],
    ),
    (
        "The city has about 3,000,000 people, and the train leaves at 10:30 sharp.",
        ["The city has about 3,000,000 people,", "and the train leaves at 10:30 sharp."],
    ),
    ("明天的会议时间是10：30，请大家准时到。", ["明天的会议时间是10：30，", "请大家准时到。"]),
    (
        '"Well," she said, "that is all I know." Then she left.',
        ['"Well," she said, "that is all I know."', "Then she left."],
    ),
    ("「好的！」她笑着说。（笑）我们走吧。", ["「好的！」", "她笑着说。", "我们走吧。"]),
    (
        "It is 30℃ today! Item #1 costs 5 * 3 = 15 dollars.",
        ["It is 30 degrees Celsius today!", "Item number 1 costs 5 times 3 equals 15 dollars."],
    ),
]


def trained_byte_level_bpe(pre_tokenizer):
    """A 1000-token byte-level BPE on the tiny Qwen2 fixture's corpus: small, so unseen text
    (quotes, URLs, "……") is cut into many short tokens, as rare text is by a real vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(training_corpus(), trainer)
    return tokenizer.encode, tokenizer.decode


def qwen2_style():
    from tokenizers import Regex, pre_tokenizers

    return trained_byte_level_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))


def gpt2_style():  # SmolLM2's and GPT-2's pre-tokenizer: "docs" "." "python"
    from tokenizers import pre_tokenizers

    return trained_byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))


def smollm2():
    """The embedded LLM's own tokenizer, read from its GGUF (a few seconds)."""
    pytest.importorskip("gguf")
    from llm.base import LLMError
    from llm.embedded import embedded_gguf_path

    try:
        path = embedded_gguf_path()
    except LLMError:
        pytest.skip("embedded SmolLM2 not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return (lambda text: tokenizer.encode(text, add_special_tokens=False)), tokenizer.decode


@pytest.fixture(scope="module", params=[qwen2_style, gpt2_style, smollm2])
def tokenizer(request):
    pytest.importorskip("tokenizers")
    return request.param()


def streamed_pieces(tokenizer, text: str) -> list[str]:
    """The text pieces an LLM backend streams: decode the ids so far after each token and pass
    on what is new, holding back a character whose bytes are not all there yet."""
    encode, decode = tokenizer
    ids = encode(text)
    ids = ids.ids if hasattr(ids, "ids") else ids
    pieces, sent = [], ""
    for end in range(1, len(ids) + 1):
        so_far = decode(ids[:end])
        if not so_far.endswith("\ufffd"):
            pieces.append(so_far[len(sent) :])
            sent = so_far
    return pieces


def split(pieces: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    return [s for piece in pieces for s in splitter.feed(piece)] + splitter.finish()


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[text[:24] for text, _ in CASES])
def test_sentences_from_real_token_pieces_equal_those_from_the_whole_text(tokenizer, text, expected):
    pieces = streamed_pieces(tokenizer, text)
    assert "".join(pieces) == text
    assert len(pieces) > 3
    assert split(pieces) == split([text]) == expected
