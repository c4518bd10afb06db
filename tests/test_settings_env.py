"""Settings from the environment: a variable set but empty is refused with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_settings
from pydantic import ValidationError


def _cli(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("GRADWATCH_") and k != "DATABASE_URL"}
    base.update(GRADWATCH_DATA_DIR=str(tmp), GRADWATCH_LOG_FORMAT="text", **env)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, env=base, timeout=60, cwd=tmp)


@pytest.mark.parametrize("value", ["", "  ", "\n"])
def test_an_empty_database_url_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL is set but empty"):
        make_settings(tmp_path, database_url=value)


def test_a_database_url_from_a_secrets_file_loses_its_newline(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert make_settings(tmp_path, database_url=url + "\n").url == url
    unset = make_settings(tmp_path, database_url=None).url  # unset: the default
    assert unset == f"sqlite:///{tmp_path / 'gradwatch.db'}"


@pytest.mark.parametrize("variable", ["DATABASE_URL", "GRADWATCH_DATABASE_URL"])
def test_the_cli_names_an_empty_database_url_without_a_traceback(tmp_path: Path,
                                                                variable: str) -> None:
    for command in (["migrate"], ["serve", "--port", "1"]):
        r = _cli(tmp_path, *command, **{variable: ""})
        assert r.returncode == 2, r.stderr
        assert "DATABASE_URL is set but empty" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "gradwatch.db").exists()  # nothing created
