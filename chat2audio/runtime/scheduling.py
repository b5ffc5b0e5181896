"""Earliest deadline first: an engine's one worker thread runs the most urgent job next.

A reply that is already playing has slack: its listener has audio buffered until the moment
playback reaches the end of what was sent. A new reply's first sentence has none. The pipeline
states each sentence's deadline (`speaking_by`); an engine whose worker is a `DeadlineExecutor`
reads it when a job is submitted, so a newcomer's first sentence goes before the fifth sentence
of a reply with seconds of audio in hand, and no reply waits past the moment it would run dry
while a job with a later deadline runs.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_deadline: ContextVar[float | None] = ContextVar("chat2audio_deadline", default=None)


@contextmanager
def speaking_by(deadline: float) -> Iterator[None]:
    """Jobs submitted inside this block are due at `deadline` (time.monotonic() seconds)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def current_deadline() -> float:
    """When work submitted here is due: the enclosing `speaking_by`'s deadline, else now."""
    due = _deadline.get()
    return time.monotonic() if due is None else due


class DeadlineExecutor(Executor):
    """One worker thread at a time; jobs run earliest deadline first, then in the order submitted. A
    job submitted outside `speaking_by` (loading models, warm-up) is due now.

    The thread ends when no job is left and the next job starts a new one. A torch engine's thread
    keeps an OpenMP team of its own, and an idle team is not free: libgomp spins only briefly once
    it manages more threads than there are cores, so every parallel region of another engine (the
    LLM decoding beside an idle voice) pays to wake its workers from sleep. `bench.torch_threads`
    measured this for the LLM's batch thread, which ends when idle for the same reason.
    """

    def __init__(self, thread_name: str) -> None:
        self._jobs: list[tuple[float, int, Future, Callable[[], Any]]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()  # guards the jobs and the thread
        self._closed = False
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None  # while there are jobs

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        due = current_deadline()
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            heapq.heappush(self._jobs, (due, next(self._order), future, lambda: fn(*args, **kwargs)))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._thread_name, daemon=True)
                self._thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                for _, _, future, _ in self._jobs:
                    future.cancel()
                self._jobs.clear()
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._thread = None  # the next job starts a new thread
                    return
                _, _, future, job = heapq.heappop(self._jobs)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as error:
                future.set_exception(error)
