"""Earliest deadline first on an engine's one worker thread."""

from __future__ import annotations

import threading
import time

import pytest

from chat2audio.runtime.scheduling import DeadlineExecutor, speaking_by


def test_waiting_jobs_run_earliest_deadline_first_then_in_order_of_arrival():
    worker = DeadlineExecutor("test")
    gate, ran = threading.Event(), []
    blocker = worker.submit(gate.wait)  # busy: everything below waits and is then ordered
    now = time.monotonic()
    jobs = []
    for name, due in [("fifth sentence, 4 s of audio in hand", now + 4), ("newcomer's first sentence", now),
                      ("second sentence", now + 1.5), ("another newcomer", now), ("warm-up", None)]:
        if due is None:
            jobs.append(worker.submit(ran.append, name))
        else:
            with speaking_by(due):
                jobs.append(worker.submit(ran.append, name))
    gate.set()
    for job in [blocker, *jobs]:
        job.result(timeout=5)
    assert ran == ["newcomer's first sentence", "another newcomer", "warm-up", "second sentence",
                   "fifth sentence, 4 s of audio in hand"]
    worker.shutdown()


def test_failures_reach_the_future_and_shutdown_cancels_what_waits():
    worker = DeadlineExecutor("test")
    with pytest.raises(ZeroDivisionError):
        worker.submit(lambda: 1 / 0).result(timeout=5)
    gate = threading.Event()
    running = worker.submit(gate.wait)
    waiting = worker.submit(lambda: "never")
    threading.Timer(0.1, gate.set).start()
    worker.shutdown(wait=True, cancel_futures=True)
    assert running.done() and waiting.cancelled()
    with pytest.raises(RuntimeError):
        worker.submit(print)


def test_the_worker_thread_ends_when_idle_and_the_next_job_starts_one_jobs_never_overlap():
    worker = DeadlineExecutor("test-idle")
    running, overlapped, threads = threading.Lock(), [], []

    def job() -> None:
        if not running.acquire(blocking=False):
            overlapped.append(True)
            return
        try:
            threads.append(threading.current_thread())
            time.sleep(0.002)
        finally:
            running.release()

    for _ in range(3):  # bursts of jobs, each submitted while the previous thread may still be ending
        for future in [worker.submit(job) for _ in range(20)]:
            future.result(timeout=5)
        deadline = time.monotonic() + 5
        while any(thread.name == "test-idle" and thread.is_alive() for thread in threading.enumerate()):
            assert time.monotonic() < deadline, "the worker thread outlived its last job"
            time.sleep(0.005)
    assert not overlapped and len(threads) == 60
    assert len(set(threads)) >= 3  # a new thread per burst
    worker.shutdown()
    with pytest.raises(RuntimeError):
        worker.submit(print)
