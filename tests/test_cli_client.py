"""The `gradwatch` client commands, run as real processes against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.showcase import DIVERGING_SPEC
from client.cli import EXIT
from tests.conftest import SMALL_SPEC, LiveServer

GRADWATCH = str(Path(sys.executable).parent / "gradwatch")


def gradwatch(live: LiveServer, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRADWATCH_URL": live.url, "COLUMNS": "200"}
    env.pop("GRADWATCH_API_KEY", None)
    return subprocess.run([GRADWATCH, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def spec_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("specs")
    files = {"diverging": DIVERGING_SPEC, "small": SMALL_SPEC,
             "bad": {"data": {"source": "synthetic", "name": "spirals"},
                     "training": {"epochs": 0}}}
    out: dict[str, Any] = {}
    for name, spec in files.items():
        out[name] = tmp / f"{name}.json"
        out[name].write_text(json.dumps(spec))
    return out


@pytest.fixture(scope="module")
def exploded(live: LiveServer, spec_files: dict[str, Path]) -> str:
    """`submit --follow` of a diverging spec: progress, verdict, exit code 3."""
    result = gradwatch(live, "submit", str(spec_files["diverging"]), "--follow")
    assert result.returncode == EXIT["exploding"] == 3, result.stderr
    assert "verdict exploding" in result.stdout
    job_id = result.stdout.split()[1]
    assert live.http.get(f"/v1/jobs/{job_id}").json()["verdict"] == "exploding"
    return job_id


def test_submit_follow_exits_with_the_verdict(live: LiveServer, exploded: str,
                                              spec_files: dict[str, Path]) -> None:
    healthy = gradwatch(live, "submit", str(spec_files["small"]))
    assert healthy.returncode == 0
    job_id = healthy.stdout.strip()
    follow = gradwatch(live, "follow", job_id)
    verdict = live.http.get(f"/v1/jobs/{job_id}").json()["verdict"]
    assert follow.returncode == (0 if verdict == "healthy" else EXIT["unhealthy"])
    assert f"job {job_id} succeeded" in follow.stdout


def test_diagnose_prints_tables_and_json(live: LiveServer, exploded: str) -> None:
    table = gradwatch(live, "diagnose", exploded)
    assert table.returncode == 3
    assert "verdict exploding" in table.stdout
    assert "Findings" in table.stdout and "Recommendations" in table.stdout
    as_json = gradwatch(live, "diagnose", exploded, "--json")
    report = json.loads(as_json.stdout)
    assert report["verdict"] == "exploding" and report["recommendations"]


def test_repair_follow_runs_the_fix_and_compares(live: LiveServer, exploded: str) -> None:
    result = gradwatch(live, "repair", exploded, "--recommendation", "0", "--follow")
    child = live.http.get("/v1/jobs", params={"parent_id": exploded}).json()["items"][0]
    assert child["status"] == "succeeded"
    expected = {"healthy": 0, "exploding": 3}.get(child["verdict"], EXIT["unhealthy"])
    assert result.returncode == expected, result.stderr
    assert "verdict exploding ->" in result.stdout  # the comparison's summary


def test_plot_jobs_and_preflight(live: LiveServer, exploded: str, tmp_path: Path,
                                 spec_files: dict[str, Path]) -> None:
    out = tmp_path / "gradients.png"
    result = gradwatch(live, "plot", exploded, "-o", str(out))
    assert result.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG"
    jobs = gradwatch(live, "jobs", "--verdict", "exploding", "--json")
    assert exploded in {j["id"] for j in json.loads(jobs.stdout)}
    table = gradwatch(live, "jobs", "--limit", "5")
    assert table.returncode == 0 and "status" in table.stdout
    pre = gradwatch(live, "preflight", str(spec_files["diverging"]))
    assert pre.returncode == 0 and "Risk" in pre.stdout and "standardize" in pre.stdout


def test_errors_exit_1_with_the_field_path(live: LiveServer, spec_files: dict[str, Path]
                                           ) -> None:
    bad = gradwatch(live, "submit", str(spec_files["bad"]))
    assert bad.returncode == EXIT["error"] == 1
    assert "422" in bad.stderr and "training.epochs" in bad.stderr
    missing = gradwatch(live, "diagnose", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "404" in missing.stderr


def test_datasets_upload_list_train_predict_export_and_delete(live: LiveServer,
                                                               tmp_path: Path) -> None:
    import csv

    import numpy as np
    import pyarrow.parquet as pq

    import core

    rng = np.random.default_rng(3)
    y = np.arange(80) % 2
    X = rng.normal(size=(80, 2)) + 3.0 * y[:, None]
    data = tmp_path / "blobs.csv"
    data.write_text("x1,x2,label\n" + "".join(f"{a!r},{b!r},{c}\n" for (a, b), c in
                                              zip(X.tolist(), y, strict=True)))
    up = gradwatch(live, "datasets", "upload", str(data), "--name", "cli-blobs",
                   "--task", "classification", "--target", "label")
    assert up.returncode == 0, up.stderr
    ds_id = up.stdout.strip()
    assert "80 rows, 2 features" in up.stderr and ds_id in up.stderr
    listed = gradwatch(live, "datasets", "list", "--uploaded", "--json")
    assert ds_id in {d["id"] for d in json.loads(listed.stdout)}
    table = gradwatch(live, "datasets", "list")
    assert table.returncode == 0 and "cli-blobs" in table.stdout and "spirals" in table.stdout

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data": {"source": "uploaded", "id": ds_id},
                                "model": {"hidden": [{"units": 8}]},
                                "training": {"epochs": 3, "batch_size": 16}}))
    trained = gradwatch(live, "submit", str(spec), "--follow")
    job_id = trained.stdout.split()[1]
    assert live.http.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    unknown = gradwatch(live, "datasets", "delete", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == EXIT["error"] and "404" in unknown.stderr

    model_file = tmp_path / "m.npz"
    got = gradwatch(live, "model", "download", job_id, "-o", str(model_file))
    assert got.returncode == 0 and str(model_file) in got.stderr
    model = core.load_model(model_file)
    best = gradwatch(live, "model", "download", job_id, "--best", "-o", str(tmp_path / "b.npz"))
    assert best.returncode == 0 and core.load_model(tmp_path / "b.npz").n_features == 2

    rows = tmp_path / "rows.csv"
    rows.write_text("x1,x2\n0.0,0.1\n3.1,2.8\n")
    shown = gradwatch(live, "predict", job_id, "--input", str(rows))
    assert shown.returncode == 0, shown.stderr
    lines = list(csv.reader(shown.stdout.splitlines()))
    expected = model.predict(np.array([[0.0, 0.1], [3.1, 2.8]]))
    assert lines[0] == ["prediction", "p_0", "p_1"]
    assert [int(r[0]) for r in lines[1:]] == expected.argmax(axis=1).tolist()
    assert np.array_equal(np.array([[float(v) for v in r[1:]] for r in lines[1:]]), expected)
    npy = tmp_path / "rows.npy"
    np.save(npy, np.array([[0.0, 0.1], [3.1, 2.8]]))
    written = tmp_path / "pred.csv"
    assert gradwatch(live, "predict", job_id, "-i", str(npy), "-o", str(written)).returncode == 0
    assert written.read_text() == shown.stdout
    wide = gradwatch(live, "predict", job_id, "-i", str(data))  # 3 columns: a clear 422
    assert wide.returncode == EXIT["error"] and "422" in wide.stderr and "input columns" in \
        wide.stderr

    words = tmp_path / "words.csv"
    words.write_text("x1,x2\n0.0,abc\n")
    unreadable = gradwatch(live, "predict", job_id, "-i", str(words))
    assert unreadable.returncode == EXIT["usage"] and "must be a number" in unreadable.stderr
    for content, says in (("x1,x2\n", "no rows of numbers to predict"),
                          ("0.0,0.1\n1.0\n", "same number of columns (found 1, 2)")):
        words.write_text(content)
        refused = gradwatch(live, "predict", job_id, "-i", str(words))
        assert refused.returncode == EXIT["usage"] and says in refused.stderr, refused.stderr

    exported = gradwatch(live, "export", job_id, "metrics")
    assert exported.returncode == 0
    assert exported.stdout == live.http.get(f"/v1/jobs/{job_id}/metrics.csv").text
    out = tmp_path / "g.parquet"
    assert gradwatch(live, "export", job_id, "gradients", "-o", str(out)).returncode == 0
    assert pq.read_table(out).num_rows == 2 * (len(exported.stdout.splitlines()) - 1)
    missing = gradwatch(live, "export", "00000000-0000-0000-0000-000000000000", "metrics")
    assert missing.returncode == EXIT["error"] and "404" in missing.stderr

    deleted = gradwatch(live, "datasets", "delete", ds_id)
    assert deleted.returncode == 0
    assert live.http.get(f"/v1/datasets/{ds_id}").status_code == 404


def test_names_and_details_are_printed_as_they_are(live: LiveServer, tmp_path: Path) -> None:
    """Text from the server is not rich markup: a job named "[/]..." listed, and an error
    detail with brackets, print as they are (the listing raised MarkupError: a traceback)."""
    name = "odd [/] [bold]name"
    spec = tmp_path / "named.json"
    spec.write_text(json.dumps({**SMALL_SPEC, "name": name}))
    submitted = gradwatch(live, "submit", str(spec), "--follow")
    assert submitted.returncode in (0, EXIT["unhealthy"]), submitted.stderr
    assert "Traceback" not in submitted.stderr
    listed = gradwatch(live, "jobs", "--limit", "3")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SMALL_SPEC, "optimizer": {"name": "[/]sgd"}}))
    rejected = gradwatch(live, "submit", str(bad))
    assert rejected.returncode == EXIT["error"], rejected.stderr
    assert "Traceback" not in rejected.stderr and "error 422" in rejected.stderr
    assert "[/]sgd" in rejected.stderr  # the detail as the server wrote it


def test_a_file_that_cannot_be_used_is_a_usage_error(live: LiveServer, exploded: str,
                                                     tmp_path: Path) -> None:
    """A spec that is not there, an image into a folder that is not there: exit 2 naming the
    file (a missing output folder was "cannot read the input", a permission error "cannot
    reach" the server)."""
    missing = tmp_path / "nope.json"
    read = gradwatch(live, "submit", str(missing))
    assert read.returncode == EXIT["usage"], read.stderr
    assert f"cannot use {missing}: No such file or directory" in read.stderr
    target = tmp_path / "no-such-folder" / "gradients.png"
    write = gradwatch(live, "plot", exploded, "-o", str(target))
    assert write.returncode == EXIT["usage"], write.stderr
    assert f"cannot use {target}" in write.stderr and "Traceback" not in write.stderr


def test_repair_runs_a_patch_of_ones_own(live: LiveServer, spec_files: dict[str, Path],
                                         tmp_path: Path) -> None:
    """`repair --patch JSON|@FILE`: the fix the server's 409 asks for on a run without
    recommendations ("pass your own spec_patch"), which the CLI could not send (repair took
    only --recommendation)."""
    job_id = gradwatch(live, "submit", str(spec_files["small"])).stdout.strip()
    live.wait_for(job_id, {"succeeded"})
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"optimizer": {"name": "sgd", "lr": 0.05}}))
    result = gradwatch(live, "repair", job_id, "--patch", f"@{patch}", "--follow")
    assert result.returncode in (0, EXIT["exploding"], EXIT["unhealthy"]), result.stderr
    child_id = result.stdout.split()[1]
    child = live.http.get(f"/v1/jobs/{child_id}").json()
    assert child["parent_id"] == job_id and child["spec"]["optimizer"]["lr"] == 0.05
    assert "verdict " in result.stdout and " -> " in result.stdout  # the comparison
    both = gradwatch(live, "repair", job_id, "--patch", "{}", "--recommendation", "0")
    assert both.returncode == EXIT["usage"] and "not allowed with" in both.stderr
