"""`tts.gpt_sovits.process`: gsv_tts' process-wide side effects, applied once and no others."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from chat2audio.settings import PROJECT_ROOT

# In a fresh interpreter: gsv_tts may already be imported in this one, and its import is what changes things.
PROBE = """
import json, logging, os, warnings
from tts.gpt_sovits.process import prepare_process_for_gsv_tts  # (imports numpy, which adds filters)
root = logging.getLogger()
root.setLevel(logging.WARNING)
before = (list(root.handlers), root.level, list(warnings.filters))
first, second = prepare_process_for_gsv_tts(), prepare_process_for_gsv_tts()
from gsv_tts.GPT_SoVITS.GPT import t2s_model
print(json.dumps({
    "logging_and_warnings_kept": (list(root.handlers), root.level, list(warnings.filters)) == before,
    "once": first is second,
    "progress_bar": [t2s_model.tqdm.keywords, type(t2s_model.tqdm.func).__name__],
    "offline": [os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")],
}))
"""


def test_prepare_process_applies_its_settings_once_and_keeps_logging_and_warnings():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True
    )
    effects = json.loads(result.stdout.strip().splitlines()[-1])
    assert effects["logging_and_warnings_kept"]
    assert effects["once"]
    assert effects["progress_bar"][0] == {"disable": True} and effects["progress_bar"][1] != "partial"  # patched once
    assert effects["offline"] == ["1", "1"]
