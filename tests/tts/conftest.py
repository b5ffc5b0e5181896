"""Fixtures for the GPT-SoVITS engine tests: tiny real models, built once, and no network."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import NetworkGuard
from tests.fixtures.tiny_gpt_sovits import start_tiny_engine


@pytest.fixture(scope="module")
def network_guard():
    guard = NetworkGuard()
    with guard.active():
        yield guard


@pytest.fixture(autouse=True)
def _no_network_during_test(request):
    """Every test of this folder that uses the guard must leave it untouched."""
    if "network_guard" not in request.fixturenames:
        yield
        return
    guard = request.getfixturevalue("network_guard")
    before = len(guard.attempts)
    yield
    assert guard.attempts[before:] == [], "the engine tried to reach the network"


@pytest.fixture(scope="module")
def gsv_engine(tiny_gsv_models_dir, network_guard):
    engine = start_tiny_engine(tiny_gsv_models_dir, cache_size=2)
    yield engine
    asyncio.run(engine.stop())
