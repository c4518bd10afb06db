"""Schemathesis fuzzes the live OpenAPI document of a real server on SQLite (with worker
processes): every check, every phase (examples, coverage, fuzzing, stateful), with the API
key switched on and off. It must find nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LiveServer, make_settings

pytestmark = pytest.mark.timeout(600)

CONFIG = Path(__file__).with_name("fuzz") / "schemathesis.toml"
KEY = "fuzz-key-0123456789"


def st_command() -> list[str]:
    script = Path(sys.executable).with_name("st")
    if script.exists():
        return [str(script)]
    found = shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed (it is in the dev extra)")
    return [found]


@pytest.mark.parametrize("api_key", [None, KEY], ids=["auth-off", "auth-on"])
def test_schemathesis_finds_nothing(tmp_path: Path, api_key: str | None) -> None:
    settings = make_settings(tmp_path, workers=1, api_key=api_key, max_steps=200,
                             max_parameters=20_000, max_samples=2_000,
                             max_job_runtime_seconds=30)
    with LiveServer(settings) as server:
        args = [*st_command(), "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
                "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
                "--max-examples", os.environ.get("GRADWATCH_FUZZ_EXAMPLES", "25"),
                "--seed", "20261129", "--no-color", "--request-timeout", "30",
                "--workers", "1"]
        if api_key:
            args += ["--header", f"Authorization: Bearer {api_key}"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=540,
                                cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:]
