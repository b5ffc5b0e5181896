"""Download the GPT-SoVITS models into the models dir (CHAT2AUDIO_MODELS_DIR), on a machine online.

    .venv/bin/python scripts/download_models.py                  # base models + every gpt-sovits speaker
    .venv/bin/python scripts/download_models.py --voices Nahida  # base models + one voice
    .venv/bin/python scripts/download_models.py --base-only

What lands where (the layout gsv-tts-lite reads, and the paths the speaker files name):
- huggingface lj1995/GPT-SoVITS → chinese-hubert-base/, chinese-roberta-wwm-ext-large/,
  sv/pretrained_eres2netv2w24s4ep4.ckpt
- the GSV-TTS-Lite g2p release (g2p.zip) → g2p/zh/, g2p/en/ (pinyin and CMU tables, g2p_en, nltk data)
- huggingface BigPancake01/GPT-SoVITS_Mihoyo, the original system's voices: for each speakers/<id>.toml
  with engine = "gpt-sovits", GPT_models/<id>/*.ckpt, VITS_models/<id>/*.pth and ref_audios/<id>.*
  are copied to the gpt_model, sovits_model and ref_audio paths that file names
- with --g2pw, huggingface XXXXRT/GPT-SoVITS-Pretrained G2PWModel.zip → g2p/G2PWModel/ (used by the
  original GPT-SoVITS; gsv-tts-lite reads pinyin through pypinyin and does not need it)
Files already present are kept. Without network access it stops within seconds and says so.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sys
import tempfile
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

BASE_REPO = "lj1995/GPT-SoVITS"
BASE_PATTERNS = ["chinese-hubert-base/*", "chinese-roberta-wwm-ext-large/*", "sv/pretrained_eres2netv2w24s4ep4.ckpt"]
G2P_ZIP_URL = "https://github.com/chinokikiss/GSV-TTS-Lite/releases/download/g2p/g2p.zip"
VOICES_REPO = "BigPancake01/GPT-SoVITS_Mihoyo"
G2PW_REPO, G2PW_FILE = "XXXXRT/GPT-SoVITS-Pretrained", "G2PWModel.zip"
CONNECT_TIMEOUT_S = 5.0


class Offline(RuntimeError):
    pass


def main() -> int:
    from chat2audio.settings import Settings

    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=settings.models_dir)
    parser.add_argument("--speakers-dir", type=Path, default=settings.speakers_dir)
    parser.add_argument("--voices", nargs="*", help="speaker ids (default: every gpt-sovits speaker file)")
    parser.add_argument("--base-only", action="store_true", help="only the shared base models and g2p tables")
    parser.add_argument("--g2pw", action="store_true", help="also fetch G2PWModel (not needed by gsv-tts-lite)")
    args = parser.parse_args()

    models_dir: Path = args.models_dir.resolve()
    voices = [] if args.base_only else gpt_sovits_speakers(args.speakers_dir, args.voices)
    try:
        from huggingface_hub import constants

        reachable(constants.ENDPOINT)
        reachable(G2P_ZIP_URL)
        models_dir.mkdir(parents=True, exist_ok=True)
        download_base(models_dir)
        download_g2p(models_dir)
        if args.g2pw:
            download_g2pw(models_dir)
        for speaker_id, voice in voices:
            download_voice(models_dir, speaker_id, voice)
    except Offline as error:
        print(f"error: {error}", file=sys.stderr)
        print(
            "Run this on a machine with internet access, then copy the models dir here "
            f"(it goes to {models_dir}; set CHAT2AUDIO_MODELS_DIR to use another).",
            file=sys.stderr,
        )
        return 2
    print(f"done: {models_dir}")
    return 0


def reachable(url: str) -> None:
    """Fail in seconds, not after minutes of retries, when the host cannot be reached."""
    host = urlparse(url).hostname or url
    port = urlparse(url).port or 443
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise Offline(f"cannot reach {host}:{port} ({error.strerror or error})") from None


def gpt_sovits_speakers(speakers_dir: Path, wanted: list[str] | None) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(speakers_dir.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            print(f"skipping {path.name}: {error}", file=sys.stderr)
            continue
        if data.get("engine") == "gpt-sovits" and (not wanted or path.stem in wanted):
            found.append((path.stem, data.get("voice", {})))
    missing = set(wanted or ()) - {speaker_id for speaker_id, _ in found}
    if missing:
        print(f"no gpt-sovits speaker file for: {', '.join(sorted(missing))}", file=sys.stderr)
    return found


def download_base(models_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    print(f"base models from {BASE_REPO} ...")
    snapshot_download(BASE_REPO, allow_patterns=BASE_PATTERNS, local_dir=models_dir, etag_timeout=CONNECT_TIMEOUT_S)


def download_g2p(models_dir: Path) -> None:
    if (models_dir / "g2p" / "zh" / "opencpop-strict.txt").exists() and (models_dir / "g2p" / "en").is_dir():
        return
    print(f"g2p tables from {G2P_ZIP_URL} ...")
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "g2p.zip"
        with urllib.request.urlopen(G2P_ZIP_URL, timeout=60) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        extract(archive, models_dir)  # the archive holds the g2p/ folder itself


def download_g2pw(models_dir: Path) -> None:
    from huggingface_hub import hf_hub_download

    if (models_dir / "g2p" / "G2PWModel").is_dir():
        return
    print(f"G2PWModel from {G2PW_REPO} ...")
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(hf_hub_download(G2PW_REPO, G2PW_FILE, local_dir=scratch, etag_timeout=CONNECT_TIMEOUT_S))
        extract(archive, Path(scratch) / "unpacked")
        unpacked = next(
            (p for p in (Path(scratch) / "unpacked").rglob("*") if p.is_dir() and p.name.startswith("G2PW")), None
        )
        if unpacked is None:
            raise RuntimeError(f"{G2PW_FILE} holds no G2PW folder")
        shutil.copytree(unpacked, models_dir / "g2p" / "G2PWModel")


def download_voice(models_dir: Path, speaker_id: str, voice: dict) -> None:
    from huggingface_hub import hf_hub_download, list_repo_files

    files = list_repo_files(VOICES_REPO)
    sources = {
        "gpt_model": latest(f for f in files if f.startswith(f"GPT_models/{speaker_id}/") and f.endswith(".ckpt")),
        "sovits_model": latest(f for f in files if f.startswith(f"VITS_models/{speaker_id}/") and f.endswith(".pth")),
        "ref_audio": next(
            (f for f in files if f.startswith("ref_audios/") and Path(f).stem.lower() == speaker_id.lower()), None
        ),
    }
    for field, source in sources.items():
        target = voice.get(field)
        if not target:
            print(f"{speaker_id}: the speaker file has no {field}; skipped", file=sys.stderr)
            continue
        destination = models_dir / target
        if destination.exists():
            continue
        if source is None:
            print(f"{speaker_id}: {VOICES_REPO} has no {field} for this speaker; skipped", file=sys.stderr)
            continue
        print(f"{speaker_id}: {source} → {target}")
        with tempfile.TemporaryDirectory() as scratch:
            fetched = hf_hub_download(VOICES_REPO, source, local_dir=scratch, etag_timeout=CONNECT_TIMEOUT_S)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(fetched, destination)
    if not str(voice.get("ref_text", "")).strip():
        print(
            f"{speaker_id}: fill in ref_text (what {voice.get('ref_audio')} says) in its speaker file", file=sys.stderr
        )


def latest(candidates) -> str | None:
    """The checkpoint trained longest: highest epoch (e15), then step (s1200)."""

    def rank(name: str) -> tuple[int, int]:
        epoch = re.search(r"[-_]e(\d+)", name)
        step = re.search(r"_s(\d+)", name)
        return (int(epoch.group(1)) if epoch else -1, int(step.group(1)) if step else -1)

    return max(candidates, key=rank, default=None)


def extract(archive: Path, into: Path) -> None:
    into = into.resolve()
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.namelist():
            if not (into / member).resolve().is_relative_to(into):
                raise RuntimeError(f"{archive.name}: refusing to extract {member!r} outside {into}")
        bundle.extractall(into)


if __name__ == "__main__":
    sys.exit(main())
