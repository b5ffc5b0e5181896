"""Everything the GPT-SoVITS engine does to the process as a whole, in one place.

`prepare_process_for_gsv_tts()` is called by `GPTSoVITSEngine.start()` on the engine's worker
thread, is where this package first imports gsv_tts, and acts once per process (a second engine,
or a restart, only gets the modules back). It

- sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (unless already set): the models dir has been checked
  complete, so nothing should reach for a hub;
- imports gsv_tts, then puts back the root logger's handlers and level and the warning filters that
  its import changes (it calls `logging.basicConfig(level=INFO)` and `warnings.filterwarnings("ignore")`);
- turns off the tqdm progress bar its whole-sentence GPT loop draws on stderr for every sentence.

Importing this module is cheap: gsv_tts and torch are imported by that call only.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import warnings

_lock = threading.Lock()
_prepared: GsvModules | None = None


class GsvModules:
    """What the engine uses from gsv_tts, imported together."""

    def __init__(self) -> None:
        from gsv_tts import TTS
        from gsv_tts.GPT_SoVITS.Featurizer import CNHubert, CNRoberta
        from gsv_tts.GPT_SoVITS.SV import ERes2Net

        self.TTS, self.CNHubert, self.CNRoberta, self.ERes2Net = TTS, CNHubert, CNRoberta, ERes2Net


def prepare_process_for_gsv_tts() -> GsvModules:
    """Apply the process-wide settings gsv_tts needs (see the module's docstring), once per process,
    and return its modules. Safe to call again, from any thread: later calls only return them."""
    global _prepared
    with _lock:
        if _prepared is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            modules = _import_gsv_tts()
            _silence_gpt_progress_bar()
            _prepared = modules
        return _prepared


def _import_gsv_tts() -> GsvModules:
    """Import gsv_tts without its process-wide side effects on logging and warnings: the service's
    own logging and warning filters are put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with warnings.catch_warnings():
        modules = GsvModules()
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return modules


def _silence_gpt_progress_bar() -> None:
    # Its whole-sentence GPT loop draws a progress bar on stderr for every sentence.
    from gsv_tts.GPT_SoVITS.GPT import t2s_model

    t2s_model.tqdm = functools.partial(t2s_model.tqdm, disable=True)
