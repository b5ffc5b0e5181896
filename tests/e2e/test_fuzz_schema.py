"""Schemathesis against both apps' OpenAPI schemas: generated valid and invalid requests never get
a 5xx, and every response matches the documented status codes, content types and schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import scripted_env
from tests.server import running_server

SCHEMATHESIS = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.parametrize("app", ["app_stream", "app_non_stream"])
def test_no_5xx_and_responses_match_the_schema(app, tmp_path):
    env = scripted_env(tmp_path, scripted_token_delay_s="0", scripted_tts_rtf="0")
    # The schema's example request speaks as Aria: let it reach the whole pipeline.
    (tmp_path / "speakers" / "Aria.toml").write_text('engine = "scripted"\n')
    (tmp_path / "prompts" / "Aria.md").write_text("You are Aria.")
    with running_server(app, env, tmp_path / "server.log") as server:
        result = subprocess.run(
            [
                str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{server.base_url}/openapi.json",
                "--checks", "all", "--max-examples", "30", "--seed", "1", "--generation-deterministic",
                "--request-timeout", "30", "--no-color",
            ],
            capture_output=True, text=True, timeout=600,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout and " failed" not in result.stdout.split("Test cases:")[-1]
