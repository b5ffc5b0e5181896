"""Prometheus metrics, served by `GET /metrics` (prometheus-client's text format).

Each service has its own registry (tests run several in one process). What the HTTP layer sees
(requests by route and status, in flight, time to first audio) and what a reply measures at its
end (real-time factor, audio seconds per engine) is recorded as it happens; counters the
engines and admission keep anyway (LLM tokens, queued, rejected) are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds: a streamed reply's first audio is due within about a second on CPU.
TTFA_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
# Synthesis wall time / audio duration: below 1 a reply is made faster than it plays.
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)


@dataclass(frozen=True)
class LiveCounts:
    """What the service knows at any moment, read at each scrape."""

    queued: int
    running: int
    rejected: int
    llm_tokens: int


class Metrics:
    def __init__(self, live_counts: Callable[[], LiveCounts]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "chat2audio_requests", "HTTP requests answered, by route and status", ["endpoint", "status"], registry=self.registry
        )
        self.in_flight = Gauge("chat2audio_requests_in_flight", "HTTP requests being answered now", registry=self.registry)
        self.time_to_first_audio = Histogram(
            "chat2audio_time_to_first_audio_seconds", "From a request's arrival to its first audio, by route",
            ["endpoint"], buckets=TTFA_BUCKETS, registry=self.registry,
        )
        self.real_time_factor = Histogram(
            "chat2audio_real_time_factor", "A reply's wall time divided by its audio's duration, by TTS engine",
            ["engine"], buckets=RTF_BUCKETS, registry=self.registry,
        )
        self.tts_audio_seconds = Counter(
            "chat2audio_tts_audio_seconds", "Seconds of audio synthesized, by TTS engine", ["engine"], registry=self.registry
        )
        self.registry.register(_LiveCollector(live_counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, live_counts: Callable[[], LiveCounts]) -> None:
        self.live_counts = live_counts

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counts = self.live_counts()
        yield GaugeMetricFamily("chat2audio_requests_queued", "Admitted requests waiting for a running slot", value=counts.queued)
        yield GaugeMetricFamily("chat2audio_requests_running", "Requests holding a running slot", value=counts.running)
        yield CounterMetricFamily(
            "chat2audio_requests_rejected", "Requests turned away with 503 (server full, or no slot in time)", value=counts.rejected
        )
        yield CounterMetricFamily("chat2audio_llm_tokens", "Tokens the LLM generated", value=counts.llm_tokens)
