"""The sentence splitter: examples of each rule, and properties over any text and any chunking."""

from __future__ import annotations

import re

import jieba
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat2audio.splitter import (
    UNSPOKEN_SPANS,
    SentenceSplitter,
    SplitterConfig,
    is_dropped_char,
    speech_weight,
)


def split(*pieces: str, config: SplitterConfig | None = None, drop_incomplete: bool = False) -> list[str]:
    splitter = SentenceSplitter(config)
    sentences = [s for piece in pieces for s in splitter.feed(piece)]
    return sentences + splitter.finish(drop_incomplete=drop_incomplete)


def test_chinese_sentences_split_at_cjk_punctuation():
    assert split("你好！我是纳西妲。今天想聊什么呢？") == ["你好！", "我是纳西妲。", "今天想聊什么呢？"]


def test_latin_sentences_split_at_full_stops_and_marks():
    assert split("Hello there, traveller! I am Aria, your guide. Where shall we go today?") == [
        "Hello there, traveller!",
        "I am Aria, your guide.",
        "Where shall we go today?",
    ]


def test_tail_without_punctuation_is_always_flushed():
    assert split("I was saying something and then") == ["I was saying something and then"]


def test_closing_quotes_stay_with_their_sentence():
    assert split("他说：“你好呀。”然后就走了。") == ["他说：“你好呀。”", "然后就走了。"]
    assert split('She shouted "Run, now!" Then we rested a while.') == ['She shouted "Run, now!"', "Then we rested a while."]


def test_decimal_points_and_abbreviations_do_not_end_sentences():
    assert split("Pi is about 3.14 in most books. Mr. Smith agrees with that.") == [
        "Pi is about 3.14 in most books.",
        "Mr. Smith agrees with that.",
    ]


def test_tiny_fragments_merge_into_the_next_sentence():
    sentences = split("Hi there. Oh! Ah. Well, that is a very long story indeed.")
    assert sentences == ["Hi there.", "Oh! Ah. Well, that is a very long story indeed."]


def test_first_sentence_may_be_short_but_later_ones_may_not():
    assert split("嗯。好的。我们走吧。")[0] == "嗯。好的。"  # 嗯。 alone is too short even for a first sentence
    config = SplitterConfig(first_min_weight=3)
    assert split("嗯。好的。我们走吧。", config=config) == ["嗯。", "好的。我们走吧。"]


def test_first_sentence_can_end_at_a_comma_to_start_audio_sooner():
    sentences = split("Well, my dear traveller, the harbour is just down this road. Follow me.")
    assert sentences[0] == "Well, my dear traveller,"
    assert split("Well, my dear traveller, the harbour is near.", config=SplitterConfig(first_cut_at_soft_break=False)) == [
        "Well, my dear traveller, the harbour is near."
    ]


def test_stage_directions_emoji_and_markdown_are_not_spoken():
    text = "(laughs softly) **Hello** there! 😀👍 *waves happily* I'm Aria, your guide.【开心】 # Nice to meet you."
    assert split(text) == ["Hello there!", "I'm Aria, your guide.", "Nice to meet you."]


def test_eager_end_emits_without_waiting_for_the_next_piece():
    splitter = SentenceSplitter()
    assert splitter.feed("你好呀，旅行者！") == ["你好呀，旅行者！"]
    assert splitter.feed("Well then, who are you?") == ["Well then, who are you?"]
    assert splitter.feed("The harbour is near.") == ["The harbour is near."]
    assert splitter.feed("It costs 3.") == []  # "." may be "3.14": wait for the next piece
    assert splitter.feed("14 coins, said Mr.") == []  # "Mr." is no sentence end
    assert splitter.feed(" Smith.") == ["It costs 3.14 coins, said Mr. Smith."]
    lazy = SentenceSplitter(SplitterConfig(eager_ends=False))
    assert lazy.feed("你好呀，旅行者！") == []
    assert lazy.feed("”") == []
    assert lazy.finish() == ["你好呀，旅行者！”"]


def test_unspoken_span_may_straddle_pieces():
    assert split("Hello (smi", "les wi", "dely) there. Nice to see", " you （笑", "）again.") == [
        "Hello there.",
        "Nice to see you again.",
    ]


def test_unclosed_bracket_is_spoken_once_it_proves_not_to_be_a_stage_direction():
    config = SplitterConfig(max_unspoken_span=20)
    assert split("Note (this one never closes and keeps going for a while. The end.", config=config) == [
        "Note this one never closes and keeps going for a while.",
        "The end.",
    ]
    assert split("Unfinished (thought") == ["Unfinished thought"]


def test_cut_by_token_limit_drops_the_incomplete_tail():
    assert split("One whole sentence here. And then the model ran out of to", drop_incomplete=True) == [
        "One whole sentence here."
    ]
    # ...unless it is all there is.
    assert split("Only an unfinished thought", drop_incomplete=True) == ["Only an unfinished thought"]


def test_over_long_latin_run_is_cut_at_commas_then_at_word_boundaries():
    config = SplitterConfig(max_weight=40)
    sentences = split("alpha beta gamma, " * 10, config=config)
    assert all(s.endswith(",") for s in sentences[:-1])
    words = split("onewordtoolong " * 12, config=config)
    assert len(words) > 2
    assert all(set(s.split()) == {"onewordtoolong"} for s in words)
    assert all(speech_weight(s) <= 40 for s in words)


def test_endless_word_is_still_cut_into_bounded_pieces():
    sentences = split("x" * 10_000, config=SplitterConfig(max_weight=100))
    assert "".join(sentences) == "x" * 10_000
    assert max(len(s) for s in sentences) <= 201


def test_over_long_chinese_run_is_cut_between_jieba_words():
    config = SplitterConfig(max_weight=45)
    text = "我们今天一起去公园散步然后吃冰淇淋" * 6
    sentences = split(text, config=config)
    assert "".join(sentences) == text
    assert len(sentences) > 3
    boundaries = set()
    position = 0
    for word in jieba.cut(text, HMM=False):
        position += len(word)
        boundaries.add(position)
    offset = 0
    for sentence in sentences[:-1]:
        offset += len(sentence)
        assert offset in boundaries, f"cut inside a word after {sentence!r}"


# -- properties ------------------------------------------------------------------------------

ALPHABET = list("abc xyz AB 你好世界我们。！？!?…；;.,，、：:()（）【】[]*\"'“”「」#`~_😀👍\n\t0123456789")
texts = st.one_of(st.text(alphabet=st.sampled_from(ALPHABET), max_size=300), st.text(max_size=120))


def reference_spoken_text(text: str, max_span: int) -> str:
    """What should be spoken, computed on the whole text at once, independently of the splitter:
    drop closed bracket spans (no longer than max_span), emoji and markdown marks."""
    kept = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in UNSPOKEN_SPANS:
            closer, depth, j = UNSPOKEN_SPANS[ch], 1, i + 1
            while j < len(text) and j - i <= max_span:
                if text[j] == closer:
                    depth -= 1
                    if depth == 0:
                        break
                elif text[j] == ch:
                    depth += 1
                j += 1
            if j < len(text) and j - i <= max_span and text[j] == closer and depth == 0:
                i = j + 1
            else:
                i += 1  # the opener alone is dropped; what follows is spoken
            continue
        if not is_dropped_char(ch):
            kept.append(ch)
        i += 1
    return "".join(kept)


def no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


@st.composite
def text_and_pieces(draw):
    text = draw(texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_pieces())
def test_nothing_dropped_nothing_duplicated_for_any_chunking(case):
    text, pieces = case
    config = SplitterConfig(max_weight=60, max_unspoken_span=40)
    sentences = split(*pieces, config=config)
    assert no_space("".join(sentences)) == no_space(reference_spoken_text(text, max_span=40))
    assert all(s == s.strip() and s for s in sentences)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_pieces())
def test_sentences_do_not_depend_on_how_the_text_was_cut(case):
    text, pieces = case
    config = SplitterConfig(max_weight=60, max_unspoken_span=40, eager_ends=False)
    assert split(*pieces, config=config) == split(text, config=config)
