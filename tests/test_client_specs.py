"""Specs as a user hands them to the client and the CLI: a dict or a JSON file, with the
mistakes people make (a number that overflows, NaN, a file that is not JSON)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from client import Client
from client.cli import EXIT
from tests.conftest import SMALL_SPEC, LiveServer
from tests.test_cli_client import gradwatch


@pytest.mark.parametrize("lr", [math.inf, math.nan, -math.inf])
def test_a_non_finite_number_in_a_spec_names_its_field(gw: Client, lr: float) -> None:
    """``float("nan")`` in a dict: a ValueError naming the field, before anything is sent (it
    was httpx's "Out of range float values are not JSON compliant", naming nothing)."""
    spec = {**SMALL_SPEC, "optimizer": {"name": "sgd", "lr": lr}}
    for send in (gw.submit, gw.preflight):
        with pytest.raises(ValueError, match=r"optimizer\.lr is .*not a finite number"):
            send(spec)
    patch = {"model": {"hidden": [{"units": 8, "init": {"scheme": "normal", "std": lr}}]}}
    with pytest.raises(ValueError, match=r"model\.hidden\.0\.init\.std is"):
        gw.repair("00000000-0000-0000-0000-000000000000", spec_patch=patch)


def test_the_cli_names_the_file_and_the_field_of_a_number_that_overflows(
        live: LiveServer, tmp_path: Path) -> None:
    """``"lr": 1e400`` in a spec file (JSON reads it as inf): exit 2 naming the file and the
    field (it was "cannot read the input: Out of range float values are not JSON
    compliant")."""
    spec = tmp_path / "huge.json"
    spec.write_text(json.dumps(SMALL_SPEC)[:-1] + ', "optimizer": {"name": "sgd", "lr": 1e400}}')
    for command in ("submit", "preflight"):
        result = gradwatch(live, command, str(spec))
        assert result.returncode == EXIT["usage"], result.stderr
        assert str(spec) in result.stderr and "optimizer.lr" in result.stderr, result.stderr
        assert "not a finite number" in result.stderr and "Traceback" not in result.stderr


def test_a_spec_file_that_is_not_json_is_named(live: LiveServer, gw: Client, tmp_path: Path
                                                ) -> None:
    """A truncated or binary spec file: the error names the file and where the JSON broke (it
    was "cannot read the input: Expecting value: line 2 column 1 (char 10)": which input?)."""
    truncated = tmp_path / "truncated.json"
    truncated.write_text('{"data": \n')
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{")
    with pytest.raises(json.JSONDecodeError, match=r"truncated\.json is not JSON: Expecting"):
        gw.submit(truncated)
    for path, where in ((truncated, "line 2 column 1"), (binary, "")):
        result = gradwatch(live, "submit", str(path))
        assert result.returncode == EXIT["usage"], result.stderr
        assert f"{path} is not JSON" in result.stderr and where in result.stderr, result.stderr
    bom = tmp_path / "notepad.json"  # Windows editors start UTF-8 files with a byte-order mark
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(SMALL_SPEC).encode())
    assert gw.preflight(bom).summary
