"""GPT-SoVITS v2/v2Pro voices through gsv-tts-lite (module `gsv_tts`), offline, concurrent sentences
decoded together.

Importing this package is cheap: torch and gsv_tts are imported by `GPTSoVITSEngine.start()`, on
the engine's worker thread.

- `voice`: the `[voice]` table (`GPTSoVITSVoice`, the registry's `VOICE_MODEL`) and its file checks
- `base_models`: the base models and g2p tables a models dir must hold
- `guard`: how many GPT tokens a sentence may take
- `batching`: concurrent sentences decoded together on the engine's worker, most urgent first
- `cache`: prepared voices (LRU over gsv_tts' dicts, voices held by replies, remembered failures)
- `engine`: `GPTSoVITSEngine`, start / stop / synthesize on its own worker thread
- `process`: the process-wide side effects of gsv_tts, applied once at engine start-up
- `stats`: the engine's counters
"""

from tts.gpt_sovits.engine import MAX_SENTENCE_CHARS, SAMPLE_RATE, GPTSoVITSEngine
from tts.gpt_sovits.guard import SEMANTIC_HZ
from tts.gpt_sovits.stats import EngineStats
from tts.gpt_sovits.voice import VOICE_MODEL, GPTSoVITSVoice

__all__ = [
    "MAX_SENTENCE_CHARS",
    "SAMPLE_RATE",
    "SEMANTIC_HZ",
    "VOICE_MODEL",
    "EngineStats",
    "GPTSoVITSEngine",
    "GPTSoVITSVoice",
]
