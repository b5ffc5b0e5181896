"""The web page at `GET /`, end to end: the real server on the scripted backends (plus a tiny
random-weight Whisper for voice input), driven in headless Chromium by tests/e2e/web/drive.mjs
(Playwright). Install the browser and the driver with scripts/install_browser.sh."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import scripted_env
from tests.server import running_server

WEB_DIR = Path(__file__).parent / "web"
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "run scripts/install_browser.sh"

SPEAKER = "Low"
MESSAGE = "The first sentence is here. Then comes the second one! And is this the third?"
SENTENCES = ["The first sentence is here.", "Then comes the second one!", "And is this the third?"]
TEXT_MESSAGE = "Only words this time. Nothing to hear."
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
    options = {
        "speaker": SPEAKER, "message": MESSAGE, "textMessage": TEXT_MESSAGE, "unknownSpeaker": "Nobody",
        "failingSpeaker": "Fragile", "failingMessage": "This first part is fine. But this one carries POISON inside.",
        "recordSeconds": RECORD_SECONDS,
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


def test_page_lists_the_speakers(seen):
    load = scenario(seen, "load")
    assert load["title"] == "chat2audio"
    speakers = {option["id"]: option for option in load["speakers"]}
    assert set(speakers) == {"Low", "High", "Fragile", "Broken"}
    assert not any(speakers[name]["disabled"] for name in ("Low", "High", "Fragile"))
    # An unavailable speaker is listed but cannot be picked, and says why when hovered.
    assert speakers["Broken"]["disabled"]
    assert "frequency_hz" in speakers["Broken"]["title"]
    assert load["selected"] in ("Low", "High", "Fragile")
    assert load["debug"]["lastError"] is None


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


def test_microphone_uploads_a_16_bit_mono_wav(seen):
    mic = scenario(seen, "microphone")
    request = mic["request"]
    assert request["contentType"] == "multipart/form-data"
    fields = request["fields"]
    assert {key: fields[key] for key in ("speaker", "format", "session_id")} == {
        "speaker": SPEAKER, "format": "events", "session_id": mic["debug"]["sessionId"],
    }
    audio = fields["audio"]
    assert audio["filename"] == "speech.wav" and audio["type"] == "audio/wav"
    wav = audio["wav"]
    assert wav["valid"], wav
    assert (wav["format"], wav["channels"], wav["bitsPerSample"], wav["sampleRate"]) == (1, 1, 16, 16000)
    assert wav["dataBytes"] == wav["bytes"] - 44
    assert RECORD_SECONDS - 0.3 < wav["seconds"] < RECORD_SECONDS + 1.0
    assert wav["peak"] > 1000, "the fake microphone beeps: the recording should not be silent"


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
