"""The web page at `GET /`, end to end: the real server on the scripted backends (plus a tiny
random-weight Whisper for voice input, an eSpeak character whose words are timed and who speaks in
moods, and a GPT-SoVITS character whose voice is not downloaded),
driven in headless Chromium by tests/e2e/web/drive.mjs (Playwright), at 1280×800 and 390×844.
Install the browser and the driver with scripts/install_browser.sh. Screenshots of each state
are written to test-output/web/ for a person to look at."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from stt.base import decode_audio
from tests.e2e.conftest import scripted_env
from tests.ffmpeg import probe
from tests.fixtures.images import write_png
from tests.server import PROJECT_ROOT, running_server

WEB_DIR = Path(__file__).parent / "web"
SCREENSHOTS = PROJECT_ROOT / "test-output" / "web"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "run scripts/install_browser.sh"

SPEAKER = "Low"
VOICELESS = "Distant"  # a GPT-SoVITS character whose files are not in the models dir
PORTRAIT_PX = 64
MESSAGE = "The first sentence is here. Then comes the second one! And is this the third?"
SENTENCES = ["The first sentence is here.", "Then comes the second one!", "And is this the third?"]
TEXT_MESSAGE = "Only words this time. Nothing to hear."
PERFORMER = "Moody"  # eSpeak: it knows when each word is heard
PERFORMER_TOML = """engine = "espeak"
display_name = "Moody"
language = "en"
[voice]
voice = "en-us"
rate = 150
[styles.happy]
pitch = 75
rate = 175
[styles.sad]
pitch = 25
rate = 120
"""
# The scripted LLM says the message back: a reply that changes mood halfway.
PERFORM_MESSAGE = "[happy] What a lovely day it is for a long walk in the park. [sad] But now I have to go home all alone."
PERFORM_SENTENCES = ["What a lovely day it is for a long walk in the park.", "But now I have to go home all alone."]
RECORD_SECONDS = 1.2
DRIVE_TIMEOUT_S = 120

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: {INSTALL_HINT}"),
    pytest.mark.skipif(shutil.which("node") is None, reason=f"node is missing: {INSTALL_HINT}"),
    pytest.mark.skipif(
        not (WEB_DIR / "node_modules" / "playwright-core").is_dir(),
        reason=f"tests/e2e/web/node_modules is missing: {INSTALL_HINT}",
    ),
]


def voice_input_env(root: Path) -> dict[str, str]:
    """Speech-to-text on a tiny random Whisper: it hears the same nonsense in any audio, which is
    all the page needs (a transcript to show, and a reply to it)."""
    from tests.fixtures.tiny_whisper import build_tiny_whisper

    return {"CHAT2AUDIO_STT_BACKEND": "transformers", "CHAT2AUDIO_STT_MODEL": str(build_tiny_whisper(root / "whisper"))}


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict:
    """Everything the browser saw, scenario by scenario (one browser run for the whole module)."""
    root = tmp_path_factory.mktemp("web")
    # A voice upload is bigger than any JSON body; faster tokens keep the run short.
    env = scripted_env(root, max_body_bytes=str(2**20), scripted_token_delay_s="0.02") | voice_input_env(root)
    speakers = Path(env["CHAT2AUDIO_SPEAKERS_DIR"])
    write_png(speakers / f"{SPEAKER}.png", PORTRAIT_PX, PORTRAIT_PX, (200, 90, 60))
    (speakers / f"{SPEAKER}.toml").write_text(
        'engine = "scripted"\ndisplay_name = "Low Tone"\nlanguage = "en"\n'
        'description = "Hums at 220 Hz."\n[voice]\nfrequency_hz = 220\n'
    )
    (speakers / f"{VOICELESS}.toml").write_text(
        'engine = "gpt-sovits"\nlanguage = "zh"\n[voice]\ngpt_model = "GPT_weights_v2/Distant.ckpt"\n'
        'sovits_model = "SoVITS_weights_v2/Distant.pth"\nref_audio = "ref_audios/Distant.wav"\nref_text = "你好。"\n'
    )
    (Path(env["CHAT2AUDIO_PROMPTS_DIR"]) / f"{VOICELESS}.md").write_text(f"You are {VOICELESS}.")
    (speakers / f"{PERFORMER}.toml").write_text(PERFORMER_TOML)
    (Path(env["CHAT2AUDIO_PROMPTS_DIR"]) / f"{PERFORMER}.md").write_text(f"You are {PERFORMER}.")
    env["CHAT2AUDIO_MODELS_DIR"] = str(root / "models")  # empty: nothing downloaded
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    options = {
        "speaker": SPEAKER, "message": MESSAGE, "textMessage": TEXT_MESSAGE, "unknownSpeaker": "Nobody",
        "failingSpeaker": "Fragile", "failingMessage": "This first part is fine. But this one carries POISON inside.",
        "recordSeconds": RECORD_SECONDS, "voicelessSpeaker": VOICELESS, "screenshots": str(SCREENSHOTS),
        "performer": PERFORMER, "performMessage": PERFORM_MESSAGE,
    }
    with running_server("app_stream", env, root / "server.log") as server:
        page = httpx.get(f"{server.base_url}/", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), (
            f"GET / should serve chat2audio/web/index.html, got {page.status_code} {page.headers.get('content-type')}"
        )
        run = subprocess.run(
            ["node", "drive.mjs", server.base_url, json.dumps(options)],
            cwd=WEB_DIR, capture_output=True, text=True, timeout=DRIVE_TIMEOUT_S,
        )
        server_log = server.log()
    assert run.returncode == 0, f"drive.mjs failed:\n{run.stderr}\n--- server log ---\n{server_log[-4000:]}"
    results = json.loads(run.stdout)
    results["server_log"] = server_log
    return results


def scenario(seen: dict, name: str) -> dict:
    result = seen[name]
    assert result["ok"], f"{name}: {result['error']}\n--- browser console ---\n" + "\n".join(seen["console"])
    return result


def test_page_shows_each_character_with_its_state(seen):
    load = scenario(seen, "load")
    assert load["title"] == "chat2audio"
    cards = {card["id"]: card for card in load["characters"]}
    assert set(cards) == {"Low", "High", "Fragile", "Broken", VOICELESS, PERFORMER}
    assert {name: cards[name]["state"] for name in cards} == {
        "Low": "available", "High": "available", "Fragile": "available", "Broken": "voiceless", VOICELESS: "voiceless",
        PERFORMER: "available",
    }
    assert "Moods: happy, sad" in cards[PERFORMER]["title"].split("\n")
    low = cards[SPEAKER]
    assert (low["name"], low["description"]) == ("Low Tone", "Hums at 220 Hz.")
    assert low["portraitWidth"] == PORTRAIT_PX, "the portrait speakers/Low.png should be shown"
    assert cards["High"]["portraitWidth"] == 0 and cards["High"]["initials"] == "HI"
    # A character that cannot speak says why, and what to run if files are missing.
    assert "missing GPT_weights_v2/Distant.ckpt" in cards[VOICELESS]["reason"]
    assert cards[VOICELESS]["fix"] == f"python scripts/download_models.py --voices {VOICELESS}"
    assert "frequency_hz" in cards["Broken"]["reason"] and cards["Broken"]["fix"] == ""
    assert [card["id"] for card in load["characters"] if card["checked"]] == ["Fragile"]  # the first that speaks
    assert [card["id"] for card in load["characters"] if card["tabIndex"] == 0] == ["Fragile"]  # one tab stop
    assert load["current"] == "Fragile"
    assert load["debug"]["lastError"] is None
    assert Path(load["screenshot"]).stat().st_size > 10_000


def test_the_sounding_sentence_is_highlighted_and_the_latency_shown(seen):
    speak = scenario(seen, "speak")
    assert speak["debug"]["highlighted"] == SENTENCES
    # While the second sentence sounds, it is highlighted and the first is marked as said.
    playing = speak["whilePlaying"]["classes"]
    assert "speaking" in playing[1] and "spoken" in playing[0] and "speaking" not in playing[0]
    assert all("spoken" in classes and "speaking" not in classes for classes in speak["afterPlaying"]["classes"])
    assert speak["wordMarks"] == 0, "the scripted voice does not time its words: whole sentences are highlighted"
    [line] = speak["afterPlaying"]["latency"]
    match = re.fullmatch(r"first audio (\d+\.\d\d) s · whole reply (\d+\.\d\d) s", line)
    assert match, line
    latency = speak["debug"]["latency"]
    assert float(match[1]) == pytest.approx(latency["firstAudioMs"] / 1000, abs=0.006)
    assert 0 < latency["firstAudioMs"] < latency["totalMs"] < DRIVE_TIMEOUT_S * 1000
    for path in (speak["whilePlaying"]["screenshot"], speak["screenshot"]):
        assert Path(path).stat().st_size > 10_000


def test_the_word_heard_is_marked_as_the_audio_advances(seen):
    perform = scenario(seen, "perform")
    assert perform["reply"] == {"role": "assistant", "sentences": PERFORM_SENTENCES, "errors": []}  # no [tags]
    marked = perform["words"]  # each change of the word marked, frame by frame: {t, text, sentence, index}
    for number, sentence in enumerate(PERFORM_SENTENCES):
        path = [mark for mark in marked if mark["sentence"] == number]
        places = [mark["index"] for mark in path]
        assert len(places) >= 3, f"sentence {number}: the mark should pass through its words, saw {path}"
        assert places == sorted(set(places)), f"sentence {number}: the mark should only move forward, saw {places}"
        assert all(mark["text"] in sentence for mark in path)
        # With the audio: a word at a time, over the sentence's spoken length, not all at once.
        assert path[-1]["t"] - path[0]["t"] > 0.1 * len(path), path
    assert marked[-1]["text"] is None, "no word stays marked once the reply has been said"
    assert Path(perform["screenshot"]).stat().st_size > 10_000


def test_the_card_shows_the_mood_the_reply_is_spoken_in(seen):
    perform = scenario(seen, "perform")
    assert perform["styles"] == ["happy", "sad"]
    moods = perform["moods"]  # each change of the mood on the card: {t, mood}
    assert [change["mood"] for change in moods if change["mood"]] == ["happy", "sad"]
    assert moods[-1]["mood"] == "", "at rest once the reply has been said"
    # "sad" shows when the second sentence starts to sound: after the first one's words, with the second's.
    sad = next(change["t"] for change in moods if change["mood"] == "sad")
    words = perform["words"]
    assert max(w["t"] for w in words if w["sentence"] == 0) <= sad <= min(w["t"] for w in words if w["sentence"] == 1)


def test_a_mood_picked_on_the_page_holds_for_the_whole_reply(seen):
    pinned = scenario(seen, "pinned mood")
    assert pinned["withoutMoods"]["shown"] is False  # a character without moods offers none
    assert pinned["withMoods"] == {"shown": True, "options": ["", "happy", "sad"]}
    assert pinned["styles"] == ["sad", "sad"], "the reply's own [happy] tag no longer changes the mood"
    assert pinned["reply"] == {"role": "assistant", "sentences": PERFORM_SENTENCES, "errors": []}


def test_the_mouth_moves_with_the_audio_and_rests_after(seen):
    mouth = scenario(seen, "perform")["mouth"]  # each change of its drawn height (or "hidden")
    shown = [change["height"] for change in mouth if change["height"] != "hidden"]
    assert len(set(shown)) > 5, f"the mouth should open and close as the audio gets louder and softer: {shown}"
    assert mouth[-1]["height"] == "hidden"


def test_characters_are_picked_with_the_keyboard(seen):
    keyboard = scenario(seen, "keyboard")
    assert keyboard["start"] == SPEAKER
    assert keyboard["moved"]["selected"] != SPEAKER
    assert keyboard["moved"]["focused"] == keyboard["moved"]["selected"]
    assert keyboard["back"] == SPEAKER and keyboard["tabStops"] == [SPEAKER]


def test_a_character_without_its_voice_answers_in_text(seen):
    voiceless = scenario(seen, "voiceless")
    assert voiceless["textOnly"] == {"checked": True, "disabled": True}
    assert json.loads(voiceless["request"]["json"])["speaker"] == VOICELESS
    assert json.loads(voiceless["request"]["json"])["format"] == "text"
    assert voiceless["reply"]["sentences"] and voiceless["reply"]["errors"] == []
    assert voiceless["debug"]["audioReceived"] == voiceless["before"]["audioReceived"]
    assert "missing GPT_weights_v2/Distant.ckpt" in voiceless["statusOnPick"]["text"]
    # Back with a character that speaks, text only is the user's own choice again.
    assert voiceless["restored"] == {"checked": False, "disabled": False}
    assert voiceless["current"] == "Low Tone"


def test_phone_layout_keeps_characters_chat_and_composer_on_screen(seen):
    phone = scenario(seen, "phone")
    layout = phone["layout"]
    assert layout["scrollWidth"] <= 390, "the page should not scroll sideways on a phone"
    tops = {round(card["box"]["y"]) for card in layout["characters"]}
    assert len(tops) == 1, "on a phone the characters form one row"
    assert layout["composer"]["y"] + layout["composer"]["height"] <= 844
    assert layout["conversation"]["height"] > 300
    assert phone["reply"]["sentences"] == SENTENCES and phone["reply"]["errors"] == []
    for path in phone["screenshots"]:
        assert Path(path).stat().st_size > 5_000


def test_reply_sentences_show_in_order_as_their_audio_starts(seen):
    speak = scenario(seen, "speak")
    assert json.loads(speak["request"]["json"]) == {
        "input": MESSAGE, "speaker": SPEAKER, "format": "events", "session_id": speak["debug"]["sessionId"],
    }
    assert speak["reply"] == {"role": "assistant", "sentences": SENTENCES, "errors": []}
    debug = speak["debug"]
    assert debug["lastError"] is None
    assert debug["audioReceived"] == len(SENTENCES)
    assert debug["sentencesStarted"] == len(SENTENCES)  # the AudioContext really played each one
    # Each sentence's text appeared only once its audio had started, not when it arrived.
    assert [(r["text"], r["sentencesStarted"]) for r in speak["revealed"]] == [
        (text, n) for n, text in enumerate(SENTENCES, start=1)
    ]
    assert speak["revealed"][1]["audioReceived"] > 2  # the third had arrived while the second waited


def test_sentences_play_back_to_back(seen):
    scheduled = scenario(seen, "speak")["debug"]["scheduled"][-len(SENTENCES):]
    for before, after in zip(scheduled, scheduled[1:]):
        end = before["startAt"] + before["duration"]
        assert after["queuedAt"] < end, "the next sentence should arrive while the previous one plays"
        assert after["startAt"] == pytest.approx(end, abs=1e-6), "a gap (or overlap) between sentences"


def test_text_only_mode_shows_text_without_audio(seen):
    text_only = scenario(seen, "textOnly")
    assert json.loads(text_only["request"]["json"])["format"] == "text"
    assert text_only["reply"]["sentences"] == ["Only words this time.", "Nothing to hear."]
    assert text_only["reply"]["errors"] == []
    before, after = text_only["before"], text_only["debug"]
    assert after["sentencesReceived"] - before["sentencesReceived"] == 2
    assert after["audioReceived"] == before["audioReceived"]
    assert after["sentencesStarted"] == before["sentencesStarted"]


def test_conversation_is_kept_and_can_be_started_over(seen):
    session = scenario(seen, "session")
    old = session["sessionId"]
    assert old and session["sentIds"] == [old, old]  # both replies belong to one conversation
    # After a reload the page shows the conversation the server remembers.
    restored = [(b["role"], " ".join(b["sentences"])) for b in session["restored"]]
    assert restored == [("user", MESSAGE), ("assistant", MESSAGE), ("user", TEXT_MESSAGE), ("assistant", TEXT_MESSAGE)]
    # "New conversation" forgets it on the server and starts a fresh session id.
    assert session["deletes"] == [f"/sessions/{old}"]
    assert session["newId"] and session["newId"] != old
    assert session["bubblesAfterNew"] == 0
    assert session["remembered"] == {"status": 200, "body": {"session_id": old, "speaker": SPEAKER, "turns": []}}
    assert not session["status"]["error"]


def test_microphone_uploads_what_the_browser_recorded(seen):
    mic = scenario(seen, "microphone")
    request = mic["request"]
    assert request["contentType"] == "multipart/form-data"
    fields = request["fields"]
    assert {key: fields[key] for key in ("speaker", "format", "session_id")} == {
        "speaker": SPEAKER, "format": "events", "session_id": mic["debug"]["sessionId"],
    }
    audio = fields["audio"]
    # MediaRecorder's own output, not re-encoded: Chromium records Opus in WebM.
    assert (audio["filename"], audio["type"]) == ("speech.webm", "audio/webm;codecs=opus")
    data = base64.b64decode(audio["base64"])
    assert data[:4] == b"\x1a\x45\xdf\xa3", "an EBML (WebM) header"
    assert mic["debug"]["upload"]["bytes"] == len(data) == audio["size"]
    if shutil.which("ffprobe"):
        found = probe(data)
        assert (found["codec_name"], found["format_name"]) == ("opus", "matroska,webm")
    samples = decode_audio(data, max_seconds=10)  # as the server decodes it, at 16 kHz
    assert RECORD_SECONDS - 0.3 < len(samples) / 16000 < RECORD_SECONDS + 1.0
    assert np.abs(samples).max() > 0.03, "the fake microphone beeps: the recording should not be silent"


def test_a_spoken_message_gets_a_spoken_reply(seen):
    mic = scenario(seen, "microphone")
    assert mic["debug"]["lastError"] is None, mic["debug"]["lastError"]
    heard = mic["userBubble"]["sentences"]
    # The placeholder "voice message" gives way to what the server heard.
    assert len(heard) == 1 and heard[0].strip() and "voice message" not in heard[0]
    assert mic["reply"]["sentences"] and mic["reply"]["errors"] == []
    assert mic["debug"]["sentencesStarted"] > mic["before"]["sentencesStarted"]


def test_an_error_in_the_middle_of_a_reply_is_shown_after_what_was_said(seen):
    failed = scenario(seen, "midStreamError")
    assert failed["reply"]["sentences"] == ["This first part is fine."]
    assert len(failed["reply"]["errors"]) == 1 and "POISON" in failed["reply"]["errors"][0]
    assert failed["debug"]["lastError"]["type"] == "upstream_error"
    assert failed["status"]["error"]


def test_http_errors_are_shown(seen):
    unknown = scenario(seen, "unknownSpeaker")
    assert unknown["reply"]["sentences"] == []
    [error] = unknown["reply"]["errors"]
    assert "Nobody" in error and "404" in error
    assert unknown["debug"]["lastError"] == {"type": "unknown_speaker", "message": unknown["debug"]["lastError"]["message"], "status": 404}
    assert unknown["status"]["error"] and "Nobody" in unknown["status"]["text"]
    assert unknown["debug"]["state"] == "idle"


def test_the_page_logs_no_script_errors(seen):
    assert not [line for line in seen["console"] if line.startswith("pageerror")], seen["console"]


def test_the_page_is_plain_es_modules_from_this_server():
    # No build step and no CDN: index.html loads one module, which imports the others by relative
    # path, and every module in chat2audio/web is part of the page.
    web = PROJECT_ROOT / "chat2audio" / "web"
    scripts = re.findall(r"<script\b[^>]*>", (web / "index.html").read_text())
    assert scripts == ['<script type="module" src="/web/main.js">']
    reached, todo = set(), ["main.js"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        for spec in re.findall(r"^import\b[^'\"]*['\"]([^'\"]+)['\"]", (web / name).read_text(), re.MULTILINE):
            assert re.fullmatch(r"\./[a-z-]+\.js", spec), f"{name} imports {spec!r}: only ./module.js of this page"
            assert (web / spec[2:]).is_file(), f"{name} imports the missing {spec}"
            todo.append(spec[2:])
    assert reached == {path.name for path in web.glob("*.js")}
