"""Conversations through the real server: session memory (bounded, per speaker, reset, expiry,
what was actually spoken when cut short), text-only replies, and speech in another language
than the reply (a per-sentence translation step before TTS)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import scripted_env
from tests.fixtures.openai_stub_server import OpenAIStubServer
from tests.server import events_of, running_server
from tts.scripted import SAMPLE_RATE, ScriptedTTS

LONG = " ".join(f"This is sentence number {n} of a long reply." for n in range(40))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    with running_server("app_stream", scripted_env(root, session_max_turns="2"), root / "server.log") as running:
        yield running


def say(server, text: str, session: str, speaker: str = "Low", **extra) -> httpx.Response:
    body = {"input": text, "speaker": speaker, "session_id": session, **extra}
    return httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=60)


def turns(server, session: str, speaker: str = "Low") -> list[dict]:
    response = httpx.get(f"{server.base_url}/sessions/{session}", params={"speaker": speaker})
    assert response.status_code == 200
    return response.json()["turns"]


def test_session_remembers_a_bounded_window_per_speaker(server):
    for n in range(3):
        assert say(server, f"Message number {n}.", "s1").status_code == 200
    remembered = turns(server, "s1")
    # max 2 exchanges: the oldest one is gone
    assert [t["content"] for t in remembered] == ["Message number 1."] * 2 + ["Message number 2."] * 2
    assert [t["role"] for t in remembered] == ["user", "assistant"] * 2
    assert turns(server, "s1", speaker="High") == []  # another character, another conversation


def test_delete_starts_the_conversation_over(server):
    say(server, "Remember me.", "s2")
    assert turns(server, "s2")
    assert httpx.delete(f"{server.base_url}/sessions/s2").status_code == 204
    assert turns(server, "s2") == []


def test_bad_session_ids_are_rejected(server):
    response = say(server, "Hi.", "../../etc")
    assert response.status_code == 422 and "session_id" in response.json()["error"]["message"]


def test_a_reply_cut_short_is_remembered_as_far_as_it_was_spoken(server):
    first_sentence_samples = int(ScriptedTTS.duration_s("This is sentence number 0 of a long reply.") * SAMPLE_RATE)
    received = 0
    body = {"input": LONG, "speaker": "Low", "session_id": "s3"}
    with httpx.stream("POST", f"{server.base_url}/chat2audio", json=body, timeout=60) as response:
        for chunk in response.iter_raw():
            received += len(chunk)
            if (received - 44) // 2 > first_sentence_samples * 1.5:
                break
    deadline = time.monotonic() + 2
    while not turns(server, "s3") and time.monotonic() < deadline:
        time.sleep(0.05)
    assistant = turns(server, "s3")[1]["content"]
    assert assistant.startswith("This is sentence number 0 of a long reply.")
    assert len(assistant) < len(LONG) / 4


def test_text_only_mode_streams_sentences_without_audio(server):
    response = say(server, "First things first. Then the rest follows.", "s4", format="text")
    assert response.status_code == 200
    events = events_of(response)
    assert [e["type"] for e in events] == ["start", "sentence", "sentence", "done"]
    assert [e["text"] for e in events[1:3]] == ["First things first.", "Then the rest follows."]
    assert all(e["audio_wav_base64"] is None for e in events[1:3])
    assert events[0]["session_id"] == "s4"


def test_text_only_works_even_when_the_voice_is_unavailable(server):
    assert say(server, "Hello there.", "s5", speaker="Broken").status_code == 503
    response = say(server, "Hello there.", "s5", speaker="Broken", format="text")
    assert response.status_code == 200
    assert events_of(response)[-1]["text"] == "Hello there."


def test_sessions_expire_when_idle(tmp_path):
    with running_server("app_stream", scripted_env(tmp_path, session_ttl_s="1"), tmp_path / "server.log") as server:
        say(server, "Short-lived.", "s6")
        assert turns(server, "s6")
        time.sleep(1.3)
        assert turns(server, "s6") == []


# -- memory as the LLM sees it, and translation, against an OpenAI-compatible server ---------


def upstream_reply(body: dict) -> str:
    system = body["messages"][0]["content"]
    if system.startswith("Translate"):
        return "JA <b>" + body["messages"][-1]["content"] + "</b>"  # markup is not spoken
    return "我在这里。我们一起走吧。"


@pytest.fixture(scope="module")
def upstream():
    with OpenAIStubServer(reply=upstream_reply, piece_delay_s=0.01) as stub:
        yield stub


@pytest.fixture(scope="module")
def upstream_server(upstream, tmp_path_factory):
    root = tmp_path_factory.mktemp("translating")
    # A reply's room as a real deployment leaves it: scripted_env's 4,000 of the stub's 4,096-token
    # window would leave the prompt less room than the openai backend's upper-bound count needs.
    env = scripted_env(
        root, llm_backend="openai", llm_base_url=upstream.base_url, llm_model="roleplay", llm_max_new_tokens="200"
    )
    (root / "speakers" / "Traveller.toml").write_text(
        'engine = "scripted"\nlanguage = "zh"\nspeech_language = "ja"\n[voice]\nfrequency_hz = 300\n'
    )
    (root / "prompts" / "Traveller.md").write_text("你是旅行者。")
    with running_server("app_stream", env, root / "server.log") as running:
        yield running


def test_the_llm_sees_the_conversation_so_far(upstream, upstream_server):
    say(upstream_server, "你是谁？", "m1")
    say(upstream_server, "我们去哪儿？", "m1")
    messages = upstream.requests[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "You are Low."),
        ("user", "你是谁？"),
        ("assistant", "我在这里。我们一起走吧。"),
        ("user", "我们去哪儿？"),
    ]


def test_a_turn_sent_while_the_last_one_is_still_speaking_waits_and_sees_it(upstream, upstream_server):
    """An impatient client posts its next line before the reply has finished: that turn must not
    race the previous one, or the LLM would answer without the exchange still being spoken."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event

    url = f"{upstream_server.base_url}/chat2audio"
    first = {"input": "你是谁？", "speaker": "Low", "session_id": "overlap-1"}
    under_way = Event()

    def listen_to_the_first_reply() -> int:
        with httpx.stream("POST", url, json=first, timeout=60) as speaking:
            for _ in speaking.iter_raw():
                under_way.set()
            return speaking.status_code

    with ThreadPoolExecutor(max_workers=1) as pool:
        first_reply = pool.submit(listen_to_the_first_reply)
        assert under_way.wait(30)  # the first reply is audibly under way (its second sentence is not)
        second = httpx.post(url, json={**first, "input": "我们去哪儿？", "format": "text"}, timeout=60)
        assert first_reply.result() == 200
    assert second.status_code == 200
    messages = [(m["role"], m["content"]) for m in upstream.requests[-1].body["messages"]]
    assert messages[1:] == [("user", "你是谁？"), ("assistant", "我在这里。我们一起走吧。"), ("user", "我们去哪儿？")]


def test_speech_in_another_language_translates_each_sentence_before_tts(upstream, upstream_server):
    response = say(upstream_server, "带我去港口。", "t1", speaker="Traveller", format="events")
    events = events_of(response)
    sentences = [e for e in events if e["type"] == "sentence"]
    assert [e["text"] for e in sentences] == ["我在这里。", "我们一起走吧。"]
    assert [e["speech_text"] for e in sentences] == ["JA 我在这里。", "JA 我们一起走吧。"]
    for event, spoken in zip(sentences, ["JA 我在这里。", "JA 我们一起走吧。"]):
        assert event["audio_seconds"] == pytest.approx(int(ScriptedTTS.duration_s(spoken) * SAMPLE_RATE) / SAMPLE_RATE)
    chats = [r.body for r in upstream.requests if r.method == "POST"]  # not the backends' GET /v1/models
    translations = [body for body in chats if body["messages"][0]["content"].startswith("Translate")]
    assert "from zh into ja" in translations[-1]["messages"][0]["content"]
    assert events[-1]["text"] == "我在这里。我们一起走吧。"  # the text shown is the original
