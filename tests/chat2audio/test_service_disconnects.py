"""Clients that hang up at any moment: every slot, lock and thread is handed back, every time.

The LLM here is fed from a real worker thread (the bridge every in-process backend uses) and
runs far ahead of the TTS, so sentences and tokens are queued when the client leaves: the
situation in which a cancelled stage used to swallow its cancellation and block forever.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chat2audio.runtime.threads import stream_from_thread
from llm.base import TextPiece
from tests.inprocess import scripted_service, speak

DISCONNECTS = 300
REPLY = " ".join(f"Sentence {n} is spoken here, word by word." for n in range(40))


class ThreadFedLLM:
    """Emits a long reply from a worker thread as fast as the bridge takes it (a token backlog)."""

    name = "thread-fed"

    def __init__(self) -> None:
        self.running = 0
        self._lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="thread-fed-llm")

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.worker.shutdown(wait=False)

    def stream_chat(self, messages, options):
        def produce(emit, cancelled: threading.Event) -> None:
            with self._lock:
                self.running += 1
            try:
                for word in REPLY.split(" "):
                    if cancelled.is_set() or not emit(TextPiece(word + " ")):
                        return
                    time.sleep(0.0002)
                emit(TextPiece("", finish_reason="stop"))
            finally:
                with self._lock:
                    self.running -= 1

        return stream_from_thread(produce, executor=self.worker)


@pytest.fixture
async def service(tmp_path):
    async with scripted_service(
        tmp_path, scripted_tts_rtf="0.02", max_concurrent_requests="4", max_queued_requests="16"
    ) as service:
        service.llm = ThreadFedLLM()
        yield service


async def test_hundreds_of_disconnects_at_random_moments_leak_nothing(service):
    rng = random.Random(10)
    hung = 0
    for attempt in range(DISCONNECTS):
        session = f"s{attempt % 3}" if attempt % 2 else None
        task = asyncio.create_task(speak(service, "Tell me a story.", session_id=session))
        await asyncio.sleep(rng.uniform(0.0, 0.06))
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        hung += not done
    assert hung == 0, f"{hung} of {DISCONNECTS} disconnected replies never finished"
    assert service.admission.admitted == 0
    assert service.active_replies == 0
    assert len(service.turn_order) == 0
    assert service.llm.running == 0
    # The conversations still work: a full turn runs and is remembered.
    assert await asyncio.wait_for(speak(service, "Tell me a story.", session_id="s1"), 30) > 0
    history = await service.sessions.history("Low", "s1")
    assert history[-1].role == "assistant" and history[-1].content.startswith("Sentence 0")
