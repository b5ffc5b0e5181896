"""Tests of `tts.gpt_sovits`, one file per module of the package, on tiny random-weight models in
the real formats: no mocks, no network (fixtures in tests/tts/conftest.py)."""
