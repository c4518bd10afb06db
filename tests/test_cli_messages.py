"""What the `gradwatch` command says when it cannot do what was asked: it refuses before any
request what the server cannot do, names its own options, and says a thing once. Real
processes against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import Client
from client.cli import EXIT, field_lines
from client.errors import ApiError, FieldError
from tests.conftest import SMALL_SPEC, SWEEP_AXES, SWEEP_SPEC_SMALL, LiveServer
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


def test_a_422_with_one_field_error_says_it_once(live: LiveServer, tmp_path: Path) -> None:
    """The detail of a 422 is its first field error: it was printed, then the same field
    error again under it."""
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({**SMALL_SPEC, "training": {"epochs": 0}}))
    result = gradwatch(live, "submit", str(spec))
    assert result.returncode == EXIT["error"] and "422" in result.stderr
    assert result.stderr.count("body.training.epochs") == 1, result.stderr


def test_a_422_with_several_field_errors_lists_the_others(live: LiveServer,
                                                          tmp_path: Path) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({**SMALL_SPEC, "training": {"epochs": 0, "batch_size": 0}}))
    result = gradwatch(live, "submit", str(spec))
    assert result.returncode == EXIT["error"] and "(and 1 more)" in result.stderr
    lines = result.stderr.splitlines()
    assert sum("body.training.epochs" in line for line in lines) == 1, result.stderr
    assert sum("body.training.batch_size" in line for line in lines) == 1, result.stderr


def test_field_lines_leave_out_what_the_detail_says() -> None:
    epochs = FieldError(loc=["body", "training", "epochs"], msg="must be > 0")
    one = ApiError(422, "Unprocessable", "body.training.epochs: must be > 0", errors=[epochs])
    assert field_lines(one) == []
    lr = FieldError(loc=["body", "optimizer", "lr"], msg="must be > 0")
    two = ApiError(422, "Unprocessable", "body.training.epochs: must be > 0 (and 1 more)",
                   errors=[epochs, lr])
    assert field_lines(two) == ["body.optimizer.lr: must be > 0"]
    other = ApiError(422, "Unprocessable", "x='nope' is not an axis",
                     errors=[FieldError(loc=["query", "x"], msg="not one of ['a', 'b']")])
    assert field_lines(other) == ["query.x: not one of ['a', 'b']"]  # says where
    close = ApiError(422, "Unprocessable", "body.training.epochs: must be > 0.5",
                     errors=[epochs])
    assert field_lines(close) == ["body.training.epochs: must be > 0"]  # not the same
    rows = ApiError(422, "Unprocessable", "a data set needs at least 2 rows",
                    errors=[FieldError(loc=["body", "X"], msg="a data set needs at least 2 rows")])
    assert field_lines(rows) == []


@pytest.fixture(scope="module")
def std_by_lr(live: LiveServer) -> str:
    """A finished 2 x 2 sweep: model.init.std (the map's y) by optimizer.lr (its x)."""
    with Client(live.url) as gw:
        sweep = gw.submit_sweep(SWEEP_SPEC_SMALL, SWEEP_AXES)
        gw.wait_sweep(sweep.id, timeout=120)
    return sweep.id


@pytest.mark.parametrize(("options", "says"), [
    (["--at", "optimizer.lr=0.5"], "optimizer.lr is the map's x axis"),
    (["--at", "model.init.std=3.0"], "model.init.std is the map's y axis"),
    (["--x", "model.init.std", "--y", "optimizer.lr", "--at", "optimizer.lr=0.5"],
     "optimizer.lr is the map's y axis"),
    (["--at", "seed=1"], "at.seed: not an axis of this sweep"),
])
def test_sweep_map_refuses_to_hold_a_plotted_axis(live: LiveServer, std_by_lr: str,
                                                  tmp_path: Path, options: list[str],
                                                  says: str) -> None:
    """`--at PATH=VALUE` on an axis the map plots (or on no axis) was ignored without a word:
    the server answered 200 and drew the whole axis. It answers a 422 naming it now."""
    target = tmp_path / "map.png"
    result = gradwatch(live, "sweep", "map", std_by_lr, str(target), *options)
    assert result.returncode == EXIT["error"] and "422" in result.stderr, result.stderr
    assert says in result.stderr and not target.exists()


def test_sweep_map_and_launch_hold_the_other_axes(live: LiveServer, std_by_lr: str,
                                                  tmp_path: Path) -> None:
    target = tmp_path / "map.svg"
    ok = gradwatch(live, "sweep", "map", std_by_lr, str(target), "--json")
    assert ok.returncode == 0, ok.stderr
    assert (json.loads(ok.stdout)["x"], json.loads(ok.stdout)["y"]) == ("optimizer.lr",
                                                                        "model.init.std")
    jobs = len(live.http.get("/v1/jobs", params={"limit": 200}).json()["items"])
    launched = gradwatch(live, "sweep", "launch", std_by_lr, "--at", "optimizer.lr=0.5")
    assert launched.returncode == EXIT["error"], launched.stderr
    assert "optimizer.lr is the map's x axis" in launched.stderr
    assert len(live.http.get("/v1/jobs", params={"limit": 200}).json()["items"]) == jobs


def test_sweep_submit_refuses_to_hold_a_plotted_axis_before_submitting(
        live: LiveServer, tmp_path: Path) -> None:
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(SWEEP_SPEC_SMALL))
    before = live.http.get("/v1/sweeps").json()["items"]
    result = gradwatch(live, "sweep", "submit", str(spec), "--axis", "seed=0,1",
                       "--axis", "optimizer.lr=0.001,0.1", "--wait", "--map",
                       str(tmp_path / "map.png"), "--at", "seed=1")
    assert result.returncode == EXIT["usage"], result.stderr
    assert "seed is the map's y (up) axis" in result.stderr
    assert live.http.get("/v1/sweeps").json()["items"] == before


def test_sweep_submit_refuses_a_map_view_without_a_map(live: LiveServer, tmp_path: Path) -> None:
    """`sweep submit --at seed=1` (or --x/--y) without --map was ignored without a word."""
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(SWEEP_SPEC_SMALL))
    before = live.http.get("/v1/sweeps").json()["items"]
    for view in (["--at", "seed=1"], ["--x", "seed"]):
        result = gradwatch(live, "sweep", "submit", str(spec), "--axis", "seed=0,1",
                           "--axis", "optimizer.lr=0.001,0.1", *view)
        assert result.returncode == EXIT["usage"], result.stderr
        assert "give --map FILE too" in result.stderr
    assert live.http.get("/v1/sweeps").json()["items"] == before
