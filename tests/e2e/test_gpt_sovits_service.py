"""GPT-SoVITS voices through the real server, on tiny random-weight models in the real on-disk
formats: valid 32 kHz WAVs in both apps, availability in /speakers, and no network access."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
import soundfile

from tests.e2e.conftest import tiny_voices_env
from tests.fixtures.tiny_gpt_sovits import SPOKEN_TEXTS
from tests.server import running_server

REPLY = SPOKEN_TEXTS[0] + SPOKEN_TEXTS[1]  # the scripted LLM says back what it is told


@pytest.fixture(scope="module")
def gsv_env(tiny_gsv_models_dir, tmp_path_factory) -> dict[str, str]:
    env = tiny_voices_env(tmp_path_factory.mktemp("gsv-service"), tiny_gsv_models_dir)
    # HF_HUB_OFFLINE is set by the server helper; a hub request would fail rather than hang.
    return env


@pytest.mark.parametrize("app", ["app_non_stream", "app_stream"])
def test_gpt_sovits_speaker_answers_with_a_32khz_wav(gsv_env, tmp_path, app):
    with running_server(app, gsv_env, tmp_path / "server.log") as server:
        speakers = {s["id"]: s for s in httpx.get(f"{server.base_url}/speakers").json()["speakers"]}
        assert speakers["Nahida"]["available"] and speakers["Nahida"]["sample_rate"] == 32000
        missing = speakers["Missing"]
        assert not missing["available"]
        for path in ("GPT_weights_v2/Nobody.ckpt", "SoVITS_weights_v2/Nobody.pth", "ref_audios/Nobody.wav"):
            assert path in missing["reason"]

        started = time.perf_counter()
        response = httpx.post(f"{server.base_url}/chat2audio", json={"input": REPLY, "speaker": "Nahida"}, timeout=300)
        assert response.status_code == 200, response.text
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        assert rate == 32000 and response.headers["x-sample-rate"] == "32000"
        assert 0.5 < audio.size / rate < 60
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.001
        assert time.perf_counter() - started < 240
        log = server.log()
        assert "huggingface.co" not in log and "Downloading" not in log


def test_concurrent_interleaved_voices_each_sound_exactly_as_alone(gsv_env, tmp_path):
    """Two voices with different weights, deterministic sampling: however the requests interleave,
    each reply is the audio that voice makes alone. Concurrent torch calls on CPU may sum floats in
    another order, so "the same" allows a few 16-bit steps; a mixed-up voice or reference is
    thousands of steps away."""
    from concurrent.futures import ThreadPoolExecutor

    text = SPOKEN_TEXTS[0]
    with running_server("app_non_stream", gsv_env, tmp_path / "server.log") as server:

        def speak(speaker: str) -> np.ndarray:
            response = httpx.post(f"{server.base_url}/chat2audio", json={"input": text, "speaker": speaker}, timeout=300)
            assert response.status_code == 200, response.text
            samples, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
            assert rate == 32000
            return samples.astype(np.int32)

        alone = {speaker: speak(speaker) for speaker in ("Nahida", "Klee")}
        order = ["Nahida", "Klee", "Klee", "Nahida"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            together = list(pool.map(speak, order))

    def steps_apart(a: np.ndarray, b: np.ndarray) -> int:
        if a.size != b.size:
            return 1 << 16
        return int(np.abs(a - b).max())

    # 16-bit steps of float summation-order noise: 1 alone, up to 12 seen on a loaded 2-core machine.
    # A bf16 vocoder (CHAT2AUDIO_TTS_PRECISION=auto on a CPU with AVX512-BF16) rounds more: ~128 seen.
    rounding = 256
    assert steps_apart(alone["Nahida"], alone["Klee"]) > 800  # measured: 12,791
    for speaker, audio in zip(order, together):
        assert steps_apart(audio, alone[speaker]) <= rounding, f"{speaker} sounded different next to the other voice"


def test_a_style_speaks_from_its_own_clip_in_the_speaker_s_timbre(gsv_env, tiny_gsv_models_dir, tmp_path):
    """Moody is TinyA with styles whose ref_audio is another clip. Which clip the service reads for
    a style is proven with an unreadable one: "hoarse" (prompt clip Broken.wav) fails naming it,
    and Moody is then unavailable for that reason. "sad" (TinyB's clip) is exactly Sadly, the same voice written
    out by hand: TinyB's clip prompts TinyA's GPT and TinyA's clip gives the timbre. (On the tiny
    random models another clip changes the audio by under 1 %, too little to tell voices apart by
    ear-like measures; the engine's test_timbre spies on which file each model reads.) A "[sad]"
    tag in the reply styles its sentence, and every sentence says when its characters are heard."""
    import base64
    import json

    from tests.fixtures.tiny_gpt_sovits import write_speaker_toml

    models = tmp_path / "models"  # the tiny models, and a clip no audio decoder can read
    (models / "ref_audios").mkdir(parents=True)
    for entry in tiny_gsv_models_dir.iterdir():
        if entry.name != "ref_audios":
            (models / entry.name).symlink_to(entry)
    for clip in (tiny_gsv_models_dir / "ref_audios").iterdir():
        (models / "ref_audios" / clip.name).symlink_to(clip)
    (models / "ref_audios" / "Broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 40)
    env = {
        **gsv_env, "CHAT2AUDIO_SPEAKERS_DIR": str(tmp_path / "speakers"), "CHAT2AUDIO_MODELS_DIR": str(models),
        "CHAT2AUDIO_TTS_CHUNK_PACING": "fixed",
    }
    voice = {"top_k": 1, "noise_scale": 0.0}
    moody = write_speaker_toml(tmp_path / "speakers", "TinyA", speaker_id="Moody", prompt="Low", **voice)
    moody.write_text(
        moody.read_text() + '\n[styles.sad]\nref_audio = "ref_audios/TinyB.wav"\n'
        '\n[styles.hoarse]\nref_audio = "ref_audios/Broken.wav"\n'
    )
    sadly = write_speaker_toml(
        tmp_path / "speakers", "TinyA", speaker_id="Sadly", prompt="Low", ref_audio="ref_audios/TinyB.wav", **voice
    )
    sadly.write_text(sadly.read_text() + 'timbre = { "ref_audios/TinyA.wav" = 1.0 }\n')  # still in [voice]
    text = SPOKEN_TEXTS[0]
    with running_server("app_non_stream", env, tmp_path / "server.log") as server:

        def ask(speaker: str, **request) -> httpx.Response:
            body = {"input": text, "speaker": speaker, **request}
            return httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=300)

        def said(speaker: str, **request) -> np.ndarray:
            response = ask(speaker, **request)
            assert response.status_code == 200, response.text
            return soundfile.read(io.BytesIO(response.content), dtype="int16")[0].astype(np.int32)

        sad, sadly = said("Moody", style="sad"), said("Sadly")
        assert sad.size == sadly.size and int(np.abs(sad - sadly).max()) <= 256

        body = {"input": f"{text}[sad]{text}", "speaker": "Moody", "format": "events"}
        response = httpx.post(f"{server.base_url}/chat2audio", json=body, timeout=300)
        assert response.status_code == 200, response.text

        # Last, as it leaves Moody unavailable (a broken style is a broken speaker file, named as such).
        hoarse = ask("Moody", style="hoarse")
        assert hoarse.status_code >= 500 and "ref_audios/Broken.wav" in hoarse.text, hoarse.text
        speakers = {s["id"]: s for s in httpx.get(f"{server.base_url}/speakers").json()["speakers"]}
        assert not speakers["Moody"]["available"] and "style hoarse" in speakers["Moody"]["reason"]
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    sentences = [event for event in events if event["type"] == "sentence"]
    assert [s["style"] for s in sentences] == [None, "sad"]
    assert all(s["text"] == text for s in sentences)  # the tag is neither spoken nor shown
    for sentence in sentences:
        audio, rate = soundfile.read(io.BytesIO(base64.b64decode(sentence["audio_wav_base64"])), dtype="float32")
        words = sentence["words"]
        assert [w["text"] for w in words] == [c for c in text if c.isalnum()]  # a character each, as written
        starts = [w["start_s"] for w in words]
        assert starts == sorted(starts) and all(w["start_s"] <= w["end_s"] for w in words)
        assert 0 <= starts[0] and words[-1]["end_s"] <= audio.size / rate + 1e-3
    assert sentences[1]["offset_s"] > sentences[0]["offset_s"]
