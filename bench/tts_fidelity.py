"""Fidelity of GPT-SoVITS' reduced precisions to fp32, on the full-size random-weight voice.

    python -m bench.tts_fidelity                      # auto (what the service uses), int8, bf16
    python -m bench.tts_fidelity --precisions int8

Prints, per precision, the GPT's teacher-forced logits error, top-k overlap and KL, the BERT
features' error and the vocoder's SNR (tests/fixtures/tts_fidelity.py says how each is measured).
"""

from __future__ import annotations

import argparse
import asyncio

from tests.fixtures.full_gpt_sovits import full_size_models, full_voice
from tests.fixtures.tts_fidelity import measure_fidelity, started_engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="auto,int8,bf16")
    args = parser.parse_args()
    models_dir, voice = full_size_models(), full_voice()
    (reference,) = started_engines(models_dir, ("fp32",))
    results = {}
    for precision in args.precisions.split(","):
        (reduced,) = started_engines(models_dir, (precision,))
        plan = reduced.precision.describe()
        results[f"{precision} ({plan})"] = measure_fidelity(reference, reduced, voice)
        asyncio.run(reduced.stop())
    asyncio.run(reference.stop())

    names = list(results)
    print("| measure (against fp32, full-size voice) | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for index, (label, _) in enumerate(next(iter(results.values())).rows()):
        print(f"| {label} | " + " | ".join(result.rows()[index][1] for result in results.values()) + " |")


if __name__ == "__main__":
    main()
