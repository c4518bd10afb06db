"""API keys as people pass them to the CLI and the client: read from a file (with its
newline), mis-pasted, missing. A real server that requires a key."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client
from client.cli import EXIT
from tests.conftest import LiveServer, make_settings
from tests.test_cli_client import GRADWATCH

KEY = "cli-keys-test-secret"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(make_settings(tmp_path_factory.mktemp("keyed"), api_key=KEY)) as server:
        yield server


def _gradwatch(server: LiveServer, *args: str, key: str | None
               ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRADWATCH_URL": server.url, "COLUMNS": "200"}
    env.pop("GRADWATCH_API_KEY", None)
    if key is not None:
        env["GRADWATCH_API_KEY"] = key
    return subprocess.run([GRADWATCH, *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_key_read_from_a_file_with_its_newline_works(keyed: LiveServer, tmp_path: Path
                                                        ) -> None:
    """``api_key=open("key").read()`` ends in a newline: it was "cannot reach <url>: Illegal
    header value b'Bearer <the whole secret key>\\n'" (blaming the network, printing the key)."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with Client(keyed.url, api_key=key_file.read_text()) as gw:
        assert gw.list().items == []
    for key in (KEY + "\n", f" {KEY} "):
        result = _gradwatch(keyed, "jobs", "--json", key=key)
        assert result.returncode == 0, result.stderr
        assert KEY not in result.stderr


def test_a_key_no_header_can_carry_is_refused_without_echoing_it(keyed: LiveServer) -> None:
    """A mis-pasted key (a curly quote, a non-ASCII letter, a newline inside): a usage error
    that names the character, never the key (it was "cannot read the input: 'ascii' codec
    can't encode character" for one, "cannot reach ... Illegal header value b'Bearer <key>'"
    with the key for the other)."""
    for bad in (f"’{KEY}’", f"{KEY[:6]}\n{KEY[6:]}"):
        with pytest.raises(ValueError, match="API key") as info:
            Client(keyed.url, api_key=bad)
        assert KEY[6:] not in str(info.value)
        result = _gradwatch(keyed, "jobs", key=bad)
        assert result.returncode == EXIT["usage"], result.stderr
        assert "API key" in result.stderr and "GRADWATCH_API_KEY" in result.stderr
        assert KEY[6:] not in result.stderr and "cannot reach" not in result.stderr


def test_a_missing_or_wrong_key_says_how_to_give_one(keyed: LiveServer) -> None:
    """A 401 tells a CLI user the option and the variable, or where the refused key came from
    (the server's detail speaks HTTP: "send `Authorization: Bearer <key>`")."""
    missing = _gradwatch(keyed, "jobs", key=None)
    assert missing.returncode == EXIT["error"] and "401" in missing.stderr, missing.stderr
    assert "give one with --api-key KEY or GRADWATCH_API_KEY" in missing.stderr
    wrong = _gradwatch(keyed, "jobs", key="not-the-key")
    assert wrong.returncode == EXIT["error"] and "401" in wrong.stderr, wrong.stderr
    assert "the key sent came from GRADWATCH_API_KEY" in wrong.stderr  # a stale variable?
    flag = _gradwatch(keyed, "jobs", "--api-key", "not-the-key", key=KEY)
    assert "the key sent came from --api-key" in flag.stderr, flag.stderr
