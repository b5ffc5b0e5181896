"""The base models every GPT-SoVITS voice needs (HuBERT, BERT, speaker verification, g2p tables),
and the check that a models dir holds them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

HUBERT_DIR = "chinese-hubert-base"
BERT_DIR = "chinese-roberta-wwm-ext-large"
SV_FILE = "sv/pretrained_eres2netv2w24s4ep4.ckpt"
G2P_FILES = {
    "zh": ("g2p/zh/opencpop-strict.txt",),
    "en": (
        "g2p/en/cmudict.rep",
        "g2p/en/cmudict-fast.rep",
        "g2p/en/engdict-hot.rep",
        "g2p/en/g2p_en/checkpoint20.npz",
        "g2p/en/g2p_en/homographs.en",
    ),
}
WHERE_TO_GET = (
    "get them with `python scripts/download_models.py` (huggingface lj1995/GPT-SoVITS for the models; "
    "the g2p tables from the GSV-TTS-Lite g2p release)"
)


def base_model_problems(root: Path, languages: Iterable[str], *, use_bert: bool) -> list[str]:
    """One line naming every base model or g2p table missing under `root` for these languages
    ("auto" needs both zh and en); empty when the dir is complete."""
    languages = set(languages)
    wanted = {HUBERT_DIR: ("config.json", "preprocessor_config.json"), SV_FILE: ()}
    if use_bert:
        wanted[BERT_DIR] = ("config.json",)
    missing = []
    for relative, inside in wanted.items():
        path = root / relative
        if not path.exists() or any(not (path / name).exists() for name in inside):
            missing.append(relative + ("/" if inside else ""))
        elif inside and not any(path.glob("*.bin")) and not any(path.glob("*.safetensors")):
            missing.append(f"{relative}/ weights")
    for language in sorted({"zh", "en"} if "auto" in languages else languages & set(G2P_FILES)):
        missing += [relative for relative in G2P_FILES[language] if not (root / relative).exists()]
    if not missing:
        return []
    return [f"missing {', '.join(missing)} in the models dir: {WHERE_TO_GET}"]
