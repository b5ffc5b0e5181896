"""The stream app (`app_stream:app`, unchanged) with the GPT-SoVITS engine's per-sentence token
budget lowered to the full-size voice profile's, for `uvicorn bench.full_voice_app:app`.

A random GPT never emits EOS, so every sentence runs to its budget; the service builds its engine
with the engine's default budget (25 + 6 tokens per phoneme, twice what real speech takes) and has
no setting for it, so the in-process rows and the server would speak different lengths. Only this
benchmark's server process is changed, before the app builds its engine.
"""

from tts.gpt_sovits import GPTSoVITSEngine

from bench.full_voice import MIN_TOKENS, TOKENS_PER_PHONE

GPTSoVITSEngine.__init__.__kwdefaults__.update(min_tokens=MIN_TOKENS, tokens_per_phone=TOKENS_PER_PHONE)

from app_stream import app  # noqa: E402  (built after the budget is set)

__all__ = ["app"]
