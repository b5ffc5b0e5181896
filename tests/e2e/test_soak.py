"""A short soak through the real server (the full one is `python -m bench.soak`): no thread
growth, no work left running for gone clients, no steady memory growth."""

from __future__ import annotations

from bench.soak import hang_up_at_random, soak
from tests.e2e.conftest import scripted_env
from tests.server import running_server


def test_soak_leaves_no_threads_work_or_memory_behind(tmp_path):
    env = scripted_env(tmp_path, scripted_token_delay_s="0.005", scripted_tts_rtf="0.02")
    with running_server("app_stream", env, tmp_path / "server.log") as server:
        report = soak(server.base_url, server.process.pid, requests=100)
        hang_up_at_random(server.base_url, server.process.pid, report, 60)
    assert not report.failures, report.failures[:5]
    assert report.aborted >= 5
    assert report.threads_after <= report.threads_before
    assert max(report.stop_latencies_s) < 1.0
    assert report.rss_mb[-1] - report.rss_mb[0] < 20, report.table()
    assert report.random_hangups == 60 and not any(report.leaked.values()), report.table()


def test_abuse_phase_answers_each_abusive_request_and_spares_the_listeners():
    """A short `python -m bench.soak --abuse` on the scripted backends: the cases of this branch's
    items (the LLM's own, 1 and 3, need the engine's fixes and the embedded model)."""
    from bench.abuse import CASES, abuse

    cases = [case for case in CASES if case.item not in ("", "1", "3")]
    report, ok = abuse("app_stream", backend="scripted", listeners=2, cases=cases)
    assert ok, report
    assert "8 × 4,096 chars of markup" in report and "abandoned" in report and "ends with error" in report
