"""The CPU cores shared by the in-process torch engines (the LLM's batch thread, GPT-SoVITS' worker).

Each engine computes on its own thread, and each torch thread runs its own pool of intra-op threads
(OpenMP), sized to every core by default. Two engines computing at once then run twice as many
threads as cores; their pools' barriers wait on threads that are not scheduled, and both get many
times slower than either alone. So an engine asks, before each step, how many threads it may use
now: every core while it computes alone, its share while others compute too (`bench/RESULTS.md`,
"threads", has the measurements).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class CoreShare:
    """Divides `cores` between the engines computing at this moment.

    An engine wraps each unit of work (a decode step, a vocoder call) in `computing()`, which sets
    the calling thread's torch threads to its share and counts it as busy meanwhile. `fixed` pins
    the threads (a setting) instead.
    """

    def __init__(self, cores: int | None = None, *, fixed: int | None = None) -> None:
        self.cores = cores or available_cores()
        self.fixed = fixed
        self._busy = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def share(self) -> int:
        """Threads for one engine now, counting the caller among the busy ones."""
        if self.fixed:
            return self.fixed
        with self._lock:
            busy = self._busy + (0 if getattr(self._local, "depth", 0) else 1)
        return max(1, self.cores // max(1, busy))

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Count the calling thread as busy and size its torch threads to its share (nesting is fine)."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._lock:
                self._busy += 1
        self._local.depth = depth + 1
        try:
            self._apply(self.share())
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._lock:
                    self._busy -= 1

    def _apply(self, threads: int) -> None:
        import torch  # only engines that use torch call this

        if getattr(self._local, "threads", None) != threads:
            torch.set_num_threads(threads)  # the calling thread's own pool (OpenMP's setting is per thread)
            self._local.threads = threads
