"""Genie-TTS (PyPI `genie-tts`: GPT-SoVITS v2 on ONNX Runtime) on a GPT-SoVITS models dir, as an
anchor row of the full-size voice profile. Runs in a Python environment of its own that has
`genie-tts`, `torch` and `transformers` (never the project's), as a child of `python -m bench`:

    <that python> -m bench.genie_anchor --models-dir DIR --gpt GPT.ckpt --sovits SOVITS.pth \
        --ref-audio REF.wav --ref-text TEXT --work CACHE_DIR

It converts the .ckpt/.pth with Genie's own converter, and builds what Genie would otherwise
download from the Hugging Face hub (its "GenieData": HuBERT and RoBERTa as ONNX, the Chinese G2P
tables) from the same models dir, so every weight is the models dir's own. Then it answers one
JSON line per JSON line read (`{"text": ..., "tokens": N}`) on its stdout; its libraries' prints go to
stderr. A random GPT never emits EOS, and Genie's own loop runs to 500 tokens: this drives Genie's
ONNX sessions (encoder, first-stage decoder, stage decoder, vocoder) with exactly N decoder steps.

Imports only the standard library at module level: the project's packages are not there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

LANGUAGE = "Chinese"


def build_genie_data(models_dir: Path, data_dir: Path) -> None:
    """GenieData from the models dir: HuBERT and RoBERTa exported to ONNX as Genie's loaders read them."""
    import torch
    from transformers import AutoModelForMaskedLM, BertTokenizerFast, HubertModel

    building = data_dir.with_name(data_dir.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    (building / "chinese-hubert-base").mkdir(parents=True)
    (building / "RoBERTa" / "roberta_tokenizer").mkdir(parents=True)
    g2p = building / "G2P" / "ChineseG2P"
    g2p.mkdir(parents=True)
    shutil.copy(models_dir / "g2p" / "zh" / "opencpop-strict.txt", g2p / "opencpop-strict.txt")
    import pickle

    # Genie's table of polyphonic corrections is downloaded; without it no word is corrected.
    (g2p / "polyphonic.pickle").write_bytes(pickle.dumps({}))
    # Only v2ProPlus voices read the speaker encoder; Genie checks that the file exists.
    (building / "speaker_encoder.onnx").write_bytes(b"")

    class Hubert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = HubertModel.from_pretrained(models_dir / "chinese-hubert-base").eval()

        def forward(self, input_values):
            return self.model(input_values).last_hidden_state.transpose(1, 2)

    class Roberta(torch.nn.Module):
        """GPT-SoVITS' BERT features: the third-last layer, one row per phoneme (`repeats`)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModelForMaskedLM.from_pretrained(models_dir / "chinese-roberta-wwm-ext-large").eval()

        def forward(self, input_ids, attention_mask, repeats):
            outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return torch.repeat_interleave(outputs.hidden_states[-3][0][1:-1], repeats, dim=0)

    with torch.no_grad():
        torch.onnx.export(
            Hubert(), (torch.zeros(1, 16000),), str(building / "chinese-hubert-base" / "chinese-hubert-base.onnx"),
            input_names=["input_values"], output_names=["ssl_content"],
            dynamic_axes={"input_values": {1: "samples"}, "ssl_content": {2: "frames"}}, dynamo=False,
        )
        ids = torch.tensor([[101, 872, 1962, 102]])
        torch.onnx.export(
            Roberta(), (ids, torch.ones_like(ids), torch.tensor([2, 2])), str(building / "RoBERTa" / "RoBERTa.onnx"),
            input_names=["input_ids", "attention_mask", "repeats"], output_names=["bert"],
            dynamic_axes={
                "input_ids": {1: "tokens"}, "attention_mask": {1: "tokens"}, "repeats": {0: "chars"}, "bert": {0: "phones"},
            },
            dynamo=False,
        )
    tokenizer = BertTokenizerFast(vocab_file=str(models_dir / "chinese-roberta-wwm-ext-large" / "vocab.txt"))
    tokenizer.backend_tokenizer.save(str(building / "RoBERTa" / "roberta_tokenizer" / "tokenizer.json"))
    shutil.rmtree(data_dir, ignore_errors=True)
    building.rename(data_dir)


def convert(gpt: Path, sovits: Path, out: Path) -> None:
    """Genie's own converter (.ckpt/.pth → ONNX); it works in (and empties) ./Cache."""
    from genie_tts.Converter.Converter import convert as genie_convert

    building = out.with_name(out.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    genie_convert(str(gpt), str(sovits), str(building))
    if not (building / "t2s_encoder_fp32.onnx").exists():
        raise RuntimeError("Genie's converter wrote no model (its log above says why)")
    shutil.rmtree(out, ignore_errors=True)
    building.rename(out)


class Genie:
    """One character loaded in Genie's model manager, synthesizing with a bounded decoder loop."""

    def __init__(self, onnx_dir: Path, ref_audio: Path, ref_text: str) -> None:
        from genie_tts import load_character
        from genie_tts.Audio.ReferenceAudio import ReferenceAudio
        from genie_tts.GetPhonesAndBert import get_phones_and_bert
        from genie_tts.ModelManager import model_manager

        load_character("bench", onnx_dir, language=LANGUAGE)
        self.model = model_manager.get("bench")
        self.reference = ReferenceAudio(prompt_wav=str(ref_audio), prompt_text=ref_text, language=LANGUAGE)
        self.phones_and_bert = get_phones_and_bert

    def synthesize(self, text: str, tokens: int) -> dict:
        import numpy as np

        ref, model = self.reference, self.model
        began = time.perf_counter()
        text_seq, text_bert = self.phones_and_bert("。" + text, language=LANGUAGE)  # Genie prepends "。" too
        text_s = time.perf_counter() - began
        mark = time.perf_counter()
        x, prompts = model.T2S_ENCODER.run(None, {
            "ref_seq": ref.phonemes_seq, "text_seq": text_seq, "ref_bert": ref.text_bert,
            "text_bert": text_bert, "ssl_content": ref.ssl_content,
        })
        y, y_emb, *cache = model.T2S_FIRST_STAGE_DECODER.run(None, {"x": x, "prompts": prompts})
        prompt_s = time.perf_counter() - mark
        mark = time.perf_counter()
        names = [item.name for item in model.T2S_STAGE_DECODER.get_inputs()]
        for _ in range(tokens):
            y, y_emb, _stop, *cache = model.T2S_STAGE_DECODER.run(None, dict(zip(names, [y, y_emb, *cache])))
        steps_s = time.perf_counter() - mark
        semantic = np.expand_dims(np.clip(y[:, -tokens:], 0, 1023), axis=0)  # an EOS id would index past the codebook
        mark = time.perf_counter()
        audio = model.VITS.run(None, {"text_seq": text_seq, "pred_semantic": semantic, "ref_audio": ref.audio_32k})[0]
        vocoder_s = time.perf_counter() - mark
        synth_s = time.perf_counter() - began
        audio_s = audio.size / 32000
        return {
            "first_chunk_s": synth_s, "whole_s": synth_s, "whole_audio_s": audio_s, "tokens": tokens,
            "text_s": text_s, "gpt_prompt_s": prompt_s, "gpt_step_ms": 1000 * steps_s / max(tokens, 1),
            "vocoder_rtf": vocoder_s / audio_s if audio_s else float("nan"),
        }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--gpt", required=True, help="relative to the models dir")
    parser.add_argument("--sovits", required=True, help="relative to the models dir")
    parser.add_argument("--ref-audio", required=True, help="relative to the models dir")
    parser.add_argument("--ref-text", required=True)
    parser.add_argument("--work", type=Path, required=True, help="where the converted models are kept between runs")
    args = parser.parse_args()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Genie prints progress; only replies go to the real stdout

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # Genie's converter writes ./Cache
    data_dir, onnx_dir = work / "GenieData", work / "onnx"
    began = time.perf_counter()
    if not (data_dir / "RoBERTa" / "RoBERTa.onnx").exists():
        build_genie_data(args.models_dir, data_dir)
    os.environ["GENIE_DATA_DIR"] = str(data_dir)  # read when genie_tts is first imported
    if not (onnx_dir / "t2s_encoder_fp32.onnx").exists():
        convert(args.models_dir / args.gpt, args.models_dir / args.sovits, onnx_dir)
    prepare_s = time.perf_counter() - began
    began = time.perf_counter()
    genie = Genie(onnx_dir, args.models_dir / args.ref_audio, args.ref_text)
    genie.synthesize("你好。", 12)  # first-call costs (session warm-up) are not a sentence's latency
    replies.write(json.dumps({"ready": True, "prepare_s": prepare_s, "load_s": time.perf_counter() - began}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        result = genie.synthesize(request["text"], int(request["tokens"]))
        replies.write(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}) + "\n")


if __name__ == "__main__":
    main()
