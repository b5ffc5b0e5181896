"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from tests.fixtures.tiny_gpt_sovits import build_tiny_gpt_sovits_models

TINY_SPEAKERS = ("TinyA", "TinyB")


class NetworkGuard:
    """Makes any TCP/UDP connection or DNS lookup fail, and remembers who tried."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    @contextlib.contextmanager
    def active(self):
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        guard = self

        def refuse(what: str) -> OSError:
            guard.attempts.append(what)
            return OSError(f"network access attempted in an offline test: {what}")

        def connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                raise refuse(f"connect {address!r}")
            return real_connect(sock, address)

        def connect_ex(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                raise refuse(f"connect_ex {address!r}")
            return real_connect_ex(sock, address)

        def getaddrinfo(host, *args, **kwargs):
            raise refuse(f"getaddrinfo {host!r}")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(socket.socket, "connect", connect)
            patch.setattr(socket.socket, "connect_ex", connect_ex)
            patch.setattr(socket, "getaddrinfo", getaddrinfo)
            patch.setenv("HF_HUB_OFFLINE", "1")
            patch.setenv("TRANSFORMERS_OFFLINE", "1")
            yield self


@pytest.fixture(scope="session")
def tiny_gsv_models_dir(tmp_path_factory) -> Path:
    """A complete tiny GPT-SoVITS models dir with speakers TinyA and TinyB (built in ~10 s)."""
    guard = NetworkGuard()
    with guard.active():
        root = build_tiny_gpt_sovits_models(
            tmp_path_factory.mktemp("gsv-models"), seed=1234, speaker_names=TINY_SPEAKERS
        )
    assert guard.attempts == []
    return root


