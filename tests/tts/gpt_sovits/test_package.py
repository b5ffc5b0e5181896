"""`tts.gpt_sovits` as a whole: cheap to import, and built by the wiring only where gsv_tts is installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chat2audio.settings import PROJECT_ROOT, Settings
from chat2audio.wiring import create_tts


def test_import_is_cheap_and_create_needs_the_package(monkeypatch, tmp_path):
    code = "import sys, tts.gpt_sovits; print(sorted({'torch', 'gsv_tts', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    engine = create_tts("gpt-sovits", Settings(models_dir=tmp_path, device="cpu", tts_cache_size=3))
    assert (engine.models_dir, engine.device_setting, engine.cache_size) == (tmp_path, "cpu", 3)
    monkeypatch.setitem(sys.modules, "gsv_tts", None)  # as if gsv-tts-lite were not installed
    with pytest.raises(ImportError):
        create_tts("gpt-sovits", Settings(models_dir=tmp_path))
