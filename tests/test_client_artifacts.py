"""The client's data sets, models, predictions and exports against a real server with real
workers: uploads stream from a file, downloads land whole on disk, answers match the API."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import core
from app.showcase import DIVERGING_SPEC
from client import ApiError, AsyncClient, Client
from client.cli import EXIT
from tests.conftest import LiveServer
from tests.test_cli_client import gradwatch

pytestmark = pytest.mark.timeout(180)


def blobs_csv(path: Path, n: int = 120) -> Path:
    rng = np.random.default_rng(7)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, 2)) + 3.0 * y[:, None]
    lines = ["a,b,label"] + [f"{a!r},{b!r},{c}" for (a, b), c in zip(X.tolist(), y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def spec_for(dataset: dict[str, Any]) -> dict[str, Any]:
    return {"name": "uploaded-blobs", "data": dataset,
            "model": {"hidden": [{"units": 8}]}, "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 3, "batch_size": 16}}


@pytest.fixture(scope="module")
def gw(live: LiveServer) -> Any:
    with Client(live.url) as client:
        yield client


@pytest.fixture(scope="module")
def trained(gw: Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A data set uploaded from a path (streamed) and a job trained on it: (dataset, job)."""
    path = blobs_csv(tmp_path_factory.mktemp("data") / "blobs.csv")
    ds = gw.upload_dataset(path, name="blobs", task="classification")
    assert (ds.n_samples, ds.n_features, ds.n_classes, ds.format) == (120, 2, 2, "csv")
    assert ds.feature_names == ["a", "b"] and ds.target_name == "label"
    job = gw.wait(gw.submit(spec_for(ds.spec_data)).id, timeout=120)
    assert job.status == "succeeded", job.error
    return ds.id, job.id


def test_upload_list_get_and_delete_a_data_set(gw: Client, tmp_path: Path,
                                               trained: tuple[str, str]) -> None:
    ds_id, _ = trained
    assert gw.dataset(ds_id).name == "blobs"
    listed = gw.datasets()["datasets"]
    assert ds_id in {d.get("id") for d in listed}
    assert any(d.get("source") == "synthetic" for d in listed)
    # an open file, read from where it stands, with the target named
    path = blobs_csv(tmp_path / "named.txt", n=30)
    with path.open("rb") as f:
        other = gw.upload_dataset(f, name="from-file", task="regression", target="a",
                                  format="csv")
    assert other.target_name == "a" and other.feature_names == ["b", "label"]
    gw.delete_dataset(other.id)
    with pytest.raises(ApiError) as info:
        gw.dataset(other.id)
    assert info.value.status == 404
    with pytest.raises(ApiError) as bad:  # the server's problem detail, not a traceback
        gw.upload_dataset(path, name="x", task="classification", target="nope", format="csv")
    assert bad.value.status == 422 and "nope" in str(bad.value)
    with pytest.raises(ValueError, match="format"):
        gw.upload_dataset(path, name="x", task="classification")


def test_download_model_and_predict_agree_with_the_model_offline(
        gw: Client, tmp_path: Path, trained: tuple[str, str]) -> None:
    _, job_id = trained
    path = gw.download_model(job_id, tmp_path / "model.npz")
    assert path == tmp_path / "model.npz" and [p.name for p in tmp_path.iterdir()] == \
        ["model.npz"]  # no temporary file left behind
    model = core.load_model(path)
    X = np.array([[0.0, 0.1], [3.2, 2.9], [1.5, 1.5]])
    prediction = gw.predict(job_id, X)
    offline = model.predict(X)
    assert prediction.as_array().tolist() == offline.argmax(axis=1).tolist()
    assert prediction.probabilities is not None
    np.testing.assert_array_equal(np.asarray(prediction.probabilities), offline)
    best = core.load_model(gw.download_model(job_id, tmp_path / "best.npz", which="best"))
    assert best.n_features == 2
    with pytest.raises(ApiError) as info:
        gw.download_model("00000000-0000-0000-0000-000000000000", tmp_path / "none.npz")
    assert info.value.status == 404 and not (tmp_path / "none.npz").exists()
    with pytest.raises(ApiError) as wide:
        gw.predict(job_id, [[1.0, 2.0, 3.0]])
    assert wide.value.status == 422 and wide.value.errors
    for rows, says in (([], "X has no rows"), ([[1.0, 2.0], [3.0]], "all of one length")):
        with pytest.raises(ValueError, match=says):  # refused before anything is sent
            gw.predict(job_id, rows)


def test_a_non_finite_model_is_a_409_unless_allowed(gw: Client, tmp_path: Path) -> None:
    job = gw.wait(gw.submit(DIVERGING_SPEC).id, timeout=120)
    target = tmp_path / "exploded.npz"
    with pytest.raises(ApiError) as info:
        gw.download_model(job.id, target)
    assert info.value.status == 409 and not target.exists()
    gw.download_model(job.id, target, allow_non_finite=True)
    assert not core.load_model(target).finite


def test_exports_stream_to_disk_equal_to_the_api(gw: Client, live: LiveServer, tmp_path: Path,
                                                 trained: tuple[str, str]) -> None:
    _, job_id = trained
    for kind in ("metrics", "gradients"):
        csv_path = gw.export_csv(job_id, kind, tmp_path / f"{kind}.csv")
        assert csv_path.read_bytes() == live.http.get(f"/v1/jobs/{job_id}/{kind}.csv").content
        pq_path = gw.export_parquet(job_id, kind, tmp_path / f"{kind}.parquet")
        table = pq.read_table(pq_path)
        assert table.column_names == csv_path.read_text().splitlines()[0].split(",")
        assert table.num_rows == len(csv_path.read_text().splitlines()) - 1
    with pytest.raises(ValueError, match="kind"):
        gw.export_csv(job_id, "loss", tmp_path / "x.csv")


def test_the_async_client_does_the_same(live: LiveServer, tmp_path: Path,
                                        trained: tuple[str, str]) -> None:
    _, job_id = trained
    path = blobs_csv(tmp_path / "blobs.csv", n=40)

    async def scenario() -> tuple[Any, ...]:
        async with AsyncClient(live.url) as agw:
            ds = await agw.upload_dataset(path, name="async", task="classification")
            got = await agw.dataset(ds.id)
            await agw.delete_dataset(ds.id)
            model = await agw.download_model(job_id, tmp_path / "m.npz")
            prediction = await agw.predict(job_id, [[0.0, 0.0]])
            csv_path = await agw.export_csv(job_id, "metrics", tmp_path / "m.csv")
            return ds, got, model, prediction, csv_path

    ds, got, model, prediction, csv_path = asyncio.run(scenario())
    assert got.id == ds.id and ds.n_samples == 40
    with pytest.raises(ApiError):
        Client(live.url).dataset(ds.id)
    offline = core.load_model(io.BytesIO(model.read_bytes())).predict(np.array([[0.0, 0.0]]))
    assert prediction.as_array().tolist() == offline.argmax(axis=1).tolist()
    assert csv_path.read_text().startswith("step,epoch,loss")


def test_a_download_target_that_cannot_be_written_is_named_before_sending(
        gw: Client, live: LiveServer, tmp_path: Path, trained: tuple[str, str]) -> None:
    """``-o`` naming a folder, or a file in a folder that is not there: the error names the
    target, before anything is downloaded (it came after the whole body arrived, naming a
    temporary file: "cannot use /tmp/.x.csv.8njbee5r.part: No such file or directory")."""
    _, job_id = trained
    missing = tmp_path / "no-such-folder" / "metrics.csv"
    with pytest.raises(FileNotFoundError) as info:
        gw.export_csv(job_id, "metrics", missing)
    assert info.value.filename == str(missing)
    with pytest.raises(IsADirectoryError) as folder:
        gw.download_model(job_id, tmp_path)
    assert folder.value.filename == str(tmp_path)
    for args in (["export", job_id, "metrics", "-o", str(missing)],
                 ["model", "download", job_id, "-o", str(tmp_path)]):
        result = gradwatch(live, *args)
        assert result.returncode == EXIT["usage"], result.stderr
        assert f"cannot use {args[-1]}: " in result.stderr and ".part" not in result.stderr


def test_rows_with_nan_or_inf_are_refused_naming_the_cell(gw: Client, live: LiveServer,
                                                          tmp_path: Path,
                                                          trained: tuple[str, str]) -> None:
    """A NaN or an Inf among the rows to predict (a gap in a CSV read as nan, a 1e400): the
    error names the row and column (it was httpx's "Out of range float values are not JSON
    compliant")."""
    _, job_id = trained
    with pytest.raises(ValueError, match=r"row 1, column 0 .* is inf"):
        gw.predict(job_id, [[0.5, 1.0], [np.inf, 2.0]])
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b\n0.5,1.0\n1.5,nan\n")
    result = gradwatch(live, "predict", job_id, "-i", str(rows))
    assert result.returncode == EXIT["usage"], result.stderr
    assert "row 1, column 1" in result.stderr and "is nan" in result.stderr, result.stderr


def test_an_upload_that_is_not_a_file_is_named(gw: Client, live: LiveServer, tmp_path: Path
                                               ) -> None:
    """A data set path that is missing, or a folder: the error says which and names it as the
    other commands do (a folder was "no such file: <folder>", and the CLI printed "cannot
    use a file: no such file: ...")."""
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError) as info:
        gw.upload_dataset(missing, name="x", task="regression")
    assert info.value.filename == str(missing)
    with pytest.raises(IsADirectoryError):
        gw.upload_dataset(tmp_path, name="x", task="regression", format="csv")
    for path, why in ((missing, "No such file or directory"), (tmp_path, "Is a directory")):
        result = gradwatch(live, "datasets", "upload", str(path), "--task", "regression",
                           "--format", "csv")
        assert result.returncode == EXIT["usage"], result.stderr
        assert f"cannot use {path}: {why}" in result.stderr, result.stderr


def test_an_npy_that_is_not_an_array_of_numbers_is_named(live: LiveServer, tmp_path: Path,
                                                          trained: tuple[str, str]) -> None:
    """`predict -i rows.npy` of a file that is not a NumPy array (a CSV renamed, an array of
    Python objects): the file and what is wrong, not NumPy's advice to unpickle it ("If you
    trust the file you can load it unsafely using the `allow_pickle=` keyword")."""
    _, job_id = trained
    renamed = tmp_path / "renamed.npy"
    renamed.write_text("a,b\n1,2\n")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([[1, "x"]], dtype=object), allow_pickle=True)
    for path in (renamed, objects):
        result = gradwatch(live, "predict", job_id, "-i", str(path))
        assert result.returncode == EXIT["usage"], result.stderr
        assert f"{path} is not a .npy array of numbers" in result.stderr, result.stderr
        assert "allow_pickle" not in result.stderr
