"""Stop strings over a growing text: nothing of a stop string (or after it) is released, even when
it arrives split over several pieces; text that only looked like its start is released."""

from __future__ import annotations

from llm.stops import StopStrings


def released(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    """What a backend would send after each piece, and whether the reply stopped."""
    matcher, text, sent, out = StopStrings(stops), "", 0, []
    for piece in pieces:
        text += piece
        end = matcher.releasable(text, sent)
        out.append(text[sent:end])
        sent = end
        if matcher.stopped:
            break
    return out, matcher.stopped


def test_a_stop_string_split_over_pieces_is_never_released():
    assert released(["Ahoy", " sail", "or<", "|en", "d|> more"], ["<|end|>"]) == (["Ahoy", " sail", "or", "", ""], True)


def test_text_that_only_looked_like_a_stop_string_is_released_once_it_is_not():
    assert released(["Ahoy <", "|en", "gine"], ["<|end|>"]) == (["Ahoy ", "", "<|engine"], False)


def test_the_earliest_of_several_stop_strings_wins():
    assert released(["one. two! three"], ["!", "."]) == (["one"], True)


def test_a_stop_string_found_across_the_last_release_point():
    assert released(["ab", "cd"], ["bc"]) == (["a", ""], True)


def test_no_stop_strings_or_empty_ones_release_everything():
    assert released(["a", "b"], []) == (["a", "b"], False)
    assert released(["a", "b"], [""]) == (["a", "b"], False)


def test_a_match_that_restarts_inside_a_partial_match_is_found():
    assert released(["aba", "bac"], ["abac"]) == (["", "ab"], True)
    assert released(["aaa", "aab"], ["aaab"]) == (["", "aa"], True)


def test_a_very_long_stop_string_holds_back_only_what_it_could_start():
    stop = "a" * 100_000 + "b"
    text = ["a" * 1000] * 50 + ["c"]  # 50,000 characters that all could start it, then not
    out, stopped = released(text, [stop])
    assert out[:-1] == [""] * 50 and out[-1] == "a" * 50_000 + "c" and not stopped


def test_reply_text_sends_whole_characters_as_their_tokens_arrive(model_dir):
    from transformers import AutoTokenizer

    from llm.stops import ReplyText

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "Ahoy, 水手！😀 The ship <|end|> waits."
    ids = tokenizer.encode(text, add_special_tokens=False)

    class Slow:  # a tokenizer without a `tokenizers` backend: the reply is decoded again per token
        decode = tokenizer.decode

    for decoding in (tokenizer, Slow()):
        reply = ReplyText(decoding, ["<|end|>"])
        pieces = [reply.add([token]) for token in ids] + [reply.add([], last=True)]
        assert "".join(pieces) == "Ahoy, 水手！😀 The ship " and reply.stopped
        assert not any("\ufffd" in piece for piece in pieces)  # a character's bytes wait for each other
        everything = ReplyText(decoding, [])
        assert "".join(everything.add([token]) for token in ids) + everything.add([], last=True) == text


def test_a_reply_cut_after_a_token_that_starts_a_character_still_says_the_characters_before_it(model_dir):
    """Byte-level BPE has tokens that finish one character and start the next (this tokenizer: 27,
    such as "看" + the first bytes of another). A reply cut right after one, at its token limit,
    ends with the finished character; only the unfinished one's bytes are dropped."""
    from transformers import AutoTokenizer

    from llm.stops import ReplyText

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    straddling = [
        (token, head) for token in range(len(tokenizer))
        if (decoded := tokenizer.decode([token])).endswith("\ufffd") and (head := decoded.rstrip("\ufffd"))
        and "\ufffd" not in head
    ]
    assert straddling, "the fixture tokenizer has such tokens"
    before = tokenizer.encode("Ahoy, ", add_special_tokens=False)
    for token, head in straddling[:5]:
        reply = ReplyText(tokenizer, [])
        sent = "".join(reply.add([each]) for each in [*before, token]) + reply.add([], last=True)
        assert sent == "Ahoy, " + head
