"""What the `gradwatch` command says when it cannot do what was asked: it refuses before any
request what the server cannot do, names its own options, and says a thing once. Real
processes against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli import EXIT
from tests.conftest import SWEEP_SPEC_SMALL, LiveServer
from tests.test_cli_client import gradwatch

pytestmark = pytest.mark.timeout(180)

NO_JOB = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize("name", ["g.jpg", "g.jpeg", "g.pdf", "gradients", "g.png.txt"])
def test_plot_refuses_an_image_name_the_server_cannot_draw(live: LiveServer, tmp_path: Path,
                                                          name: str) -> None:
    """`plot -o g.jpg` wrote PNG bytes into g.jpg (the server draws PNG or SVG only): now
    exit 2 naming the file and the formats, before any request (no job by that id is
    looked up: that would be a 404, exit 1)."""
    target = tmp_path / name
    result = gradwatch(live, "plot", NO_JOB, "-o", str(target))
    assert result.returncode == EXIT["usage"], result.stderr
    assert str(target) in result.stderr and ".png or .svg" in result.stderr
    assert "404" not in result.stderr and not target.exists()


def test_a_sweep_map_refuses_an_image_name_the_server_cannot_draw(live: LiveServer,
                                                                   tmp_path: Path) -> None:
    mapped = gradwatch(live, "sweep", "map", NO_JOB, str(tmp_path / "map.jpg"))
    assert mapped.returncode == EXIT["usage"] and ".png or .svg" in mapped.stderr
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(SWEEP_SPEC_SMALL))
    before = live.http.get("/v1/sweeps").json()["items"]
    submitted = gradwatch(live, "sweep", "submit", str(spec), "--axis", "seed=0,1",
                          "--axis", "optimizer.lr=0.001,0.1", "--wait", "--map",
                          str(tmp_path / "map.gif"))
    assert submitted.returncode == EXIT["usage"] and ".png or .svg" in submitted.stderr
    assert live.http.get("/v1/sweeps").json()["items"] == before  # nothing submitted


@pytest.mark.parametrize("name", ["g.png", "g.SVG"])
def test_plot_takes_png_and_svg_names(live: LiveServer, tmp_path: Path, name: str) -> None:
    result = gradwatch(live, "plot", NO_JOB, "-o", str(tmp_path / name))
    assert result.returncode == EXIT["error"] and "404" in result.stderr  # asked the server


def test_datasets_upload_of_an_unknown_extension_names_the_cli_option(live: LiveServer,
                                                                      tmp_path: Path) -> None:
    """`datasets upload x.json` said "pass format='csv' or 'npz'", the Python client's
    argument: the CLI names its own option."""
    data = tmp_path / "x.json"
    data.write_text("x1,label\n0.5,1\n0.7,0\n")
    result = gradwatch(live, "datasets", "upload", str(data), "--task", "classification")
    assert result.returncode == EXIT["usage"], result.stderr
    assert str(data) in result.stderr and "--format csv or --format npz" in result.stderr
    assert "format=" not in result.stderr
    given = gradwatch(live, "datasets", "upload", str(data), "--task", "classification",
                      "--format", "csv", "--json")
    assert given.returncode == 0, given.stderr
    live.http.delete(f"/v1/datasets/{json.loads(given.stdout)['id']}")
