"""Models out, end to end: real jobs trained by real worker processes keep their model; it
downloads as an .npz that core.load_model reads offline, and /predict answers exactly what
that file predicts. Exploded weights are a 409 unless asked for; bad inputs are clear 422s."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LONG_SPEC, LiveServer, make_settings
from fastapi.testclient import TestClient
from test_integration import Cluster, cluster  # noqa: F401  (the scale-out fixture)

import core
from app.showcase import DIVERGING_SPEC

pytestmark = pytest.mark.timeout(180)

TERMINAL = {"succeeded", "failed", "cancelled"}
UNKNOWN = "00000000-0000-0000-0000-000000000000"
CLASSIFIER: dict[str, Any] = {
    "name": "spirals-bn",
    "data": {"source": "synthetic", "name": "spirals", "n_samples": 300, "standardize": True,
             "input_scale": 40.0},
    "model": {"hidden": [{"units": 16, "batch_norm": True}, {"units": 16, "activation": "tanh"}]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 8, "batch_size": 32, "validation_split": 0.25},
}


def finished(live: LiveServer, spec: dict[str, Any]) -> str:
    r = live.http.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job = live.wait_for(r.json()["id"], TERMINAL, timeout=120)
    return str(job["id"])


def download(live: LiveServer, job_id: str, **params: Any) -> core.Model:
    r = live.http.get(f"/v1/jobs/{job_id}/model", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    which = params.get("which", "final")
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-{which}.npz"'
    assert int(r.headers["content-length"]) == len(r.content)
    return core.load_model(io.BytesIO(r.content))


def as_floats(values: list[Any]) -> np.ndarray:
    """JSON numbers and the strings "NaN"/"Infinity"/"-Infinity" as float64."""
    return np.array([[float(v) if not isinstance(v, str) else
                      {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}[v]
                      for v in row] for row in values])


def test_a_trained_classifier_downloads_and_predicts_the_same_through_the_api_and_offline(
        live: LiveServer) -> None:
    job_id = finished(live, CLASSIFIER)
    links = live.http.get(f"/v1/jobs/{job_id}").json()["links"]
    assert links["model"] == f"/v1/jobs/{job_id}/model"
    assert links["predict"] == f"/v1/jobs/{job_id}/predict"
    assert links["gradients_csv"] == f"/v1/jobs/{job_id}/gradients.csv"
    model = download(live, job_id)
    assert model.info["which"] == "final" and model.info["job_id"] == job_id
    assert model.spec.model_dump()["data"]["standardize"] is True
    assert model.x_mean is not None and np.abs(model.x_mean).max() > 0  # raw-scale inputs
    assert "layers.0.running_mean" in model.arrays  # batch norm: inference statistics

    X = np.random.default_rng(7).uniform(-40, 40, size=(300, 2))
    r = live.http.post(f"/v1/jobs/{job_id}/predict", json={"X": X.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    offline = model.predict(X)
    assert np.array_equal(np.array(body["probabilities"]), offline)  # bit for bit
    assert body["predictions"] == offline.argmax(axis=1).tolist()
    assert body["model"]["n_features"] == 2 and body["model"]["n_outputs"] == 3
    assert body["model"]["finite"] is True and body["model"]["which"] == "final"
    # the model learned something: training data are classified better than chance
    spec = core.TrainingSpec.model_validate(CLASSIFIER)
    trainer = core.Trainer(spec)
    raw = trainer.data.X_train * trainer.data.x_std + trainer.data.x_mean  # type: ignore[operator]
    assert np.mean(model.predict_classes(raw) == trainer.data.y_train) > 0.5
    wrong = live.http.post(f"/v1/jobs/{job_id}/predict", json={"X": [[1.0, 2.0, 3.0]]})
    assert wrong.status_code == 422
    assert wrong.json()["detail"] == "body.X.0: the model takes 2 input columns; got 3"
    assert (wrong.json()["expected"], wrong.json()["given"]) == (2, 3)
    # `inputs` is a synonym of `X`
    again = live.http.post(f"/v1/jobs/{job_id}/predict", json={"inputs": X[:3].tolist()})
    assert np.array_equal(np.array(again.json()["probabilities"]), model.predict(X[:3]))

    best = download(live, job_id, which="best")
    assert best.info["which"] == "best" and best.info["val_loss"] is not None
    r = live.http.post(f"/v1/jobs/{job_id}/predict", params={"which": "best"},
                       json={"X": X[:5].tolist()})
    assert np.array_equal(np.array(r.json()["probabilities"]), best.predict(X[:5]))


def test_regression_predictions_are_in_the_targets_scale_and_equal_offline(
        live: LiveServer) -> None:
    job_id = finished(live, {"data": {"source": "builtin", "name": "diabetes",
                                      "standardize": True},
                             "model": {"hidden": [{"units": 16}]},
                             "optimizer": {"name": "adam", "lr": 0.01},
                             "training": {"epochs": 5, "validation_split": 0.0}})
    model = download(live, job_id)
    X, y = core.data.load_builtin("diabetes")
    body = live.http.post(f"/v1/jobs/{job_id}/predict", json={"X": X[:50].tolist()}).json()
    assert body["probabilities"] is None
    assert np.array_equal(np.array(body["predictions"]), model.predict(X[:50]))
    assert abs(float(np.mean(body["predictions"])) - float(y.mean())) < 3 * float(y.std())
    r = live.http.get(f"/v1/jobs/{job_id}/model", params={"which": "best"})
    assert r.status_code == 404 and "no validation split" in r.json()["detail"]
    # a stored file damaged after the worker wrote it: a clear problem, never a 500
    stored = Path(live.settings.blob_dir) / "models" / job_id / "final.npz"  # type: ignore[arg-type]
    stored.write_bytes(stored.read_bytes()[:100])
    for r in (live.http.get(f"/v1/jobs/{job_id}/model"),
              live.http.post(f"/v1/jobs/{job_id}/predict", json={"X": X[:1].tolist()})):
        assert r.status_code == 409 and r.json()["type"].endswith("/model-damaged")


def test_an_exploded_runs_model_is_409_unless_asked_for(live: LiveServer) -> None:
    job_id = finished(live, DIVERGING_SPEC)
    assert live.http.get(f"/v1/jobs/{job_id}").json()["stop_reason"] == "non_finite"
    for r in (live.http.get(f"/v1/jobs/{job_id}/model"),
              live.http.post(f"/v1/jobs/{job_id}/predict", json={"X": [[0.0] * 8]})):
        assert r.status_code == 409
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["type"].endswith("/model-non-finite")
        assert "non-finite" in problem["detail"] and "allow_non_finite=true" in problem["detail"]
        assert "layers.0.weight" in problem["non_finite"]
    model = download(live, job_id, allow_non_finite="true")
    assert not model.finite
    r = live.http.post(f"/v1/jobs/{job_id}/predict", params={"allow_non_finite": "true"},
                       json={"X": [[0.5] * 8, [1.0] * 8]})
    assert r.status_code == 200
    assert r.json()["predictions"] == [["NaN"], ["NaN"]]  # non-finite numbers are data
    assert r.json()["model"]["finite"] is False
    np.testing.assert_array_equal(as_floats(r.json()["predictions"]),
                                  model.predict([[0.5] * 8, [1.0] * 8]))


def test_a_running_job_has_no_model_yet_and_a_cancelled_one_keeps_its_weights(
        live: LiveServer) -> None:
    job_id = live.http.post("/v1/jobs", json=LONG_SPEC).json()["id"]
    r = live.http.get(f"/v1/jobs/{job_id}/model")
    assert r.status_code == 404 and r.json()["type"].endswith("/model-not-ready")
    assert "its model is kept when it finishes" in r.json()["detail"]
    deadline = time.monotonic() + 30
    while live.http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert live.http.post(f"/v1/jobs/{job_id}/predict", json={"X": [[0, 0]]}).status_code == 404
    live.http.post(f"/v1/jobs/{job_id}/cancel")
    assert live.wait_for(job_id, TERMINAL)["status"] == "cancelled"
    model = download(live, job_id)
    assert model.info["stop_reason"] == "cancelled" and model.info["step"] > 0


def test_deleting_a_job_deletes_its_model_files(live: LiveServer) -> None:
    job_id = finished(live, CLASSIFIER)
    blobs = Path(live.settings.blob_dir) / "models" / job_id  # type: ignore[arg-type]
    assert sorted(p.name for p in blobs.iterdir()) == ["best.npz", "final.npz"]
    assert live.http.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not blobs.exists() and blobs.parent.is_dir()  # its directory went with them
    assert live.http.get(f"/v1/jobs/{job_id}/model").status_code == 404


def test_every_sweep_member_keeps_its_model(live: LiveServer) -> None:
    base = {**CLASSIFIER, "model": {"hidden": [{"units": 8}]},
            "training": {"epochs": 2, "batch_size": 32, "validation_split": 0.0}}
    r = live.http.post("/v1/sweeps", json={"spec": base, "axes": [
        {"path": "optimizer.lr", "values": [0.001, 0.01, 0.1]}]})
    assert r.status_code == 202, r.text
    sweep_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while live.http.get(f"/v1/sweeps/{sweep_id}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for member in live.http.get(f"/v1/sweeps/{sweep_id}").json()["members"]:
        model = download(live, member["job_id"])
        spec = core.TrainingSpec.model_validate(
            live.http.get(f"/v1/jobs/{member['job_id']}").json()["spec"])
        alone = core.Trainer(spec)
        alone.run()
        for name, value in alone.parameters():
            np.testing.assert_allclose(model.arrays[name], value, rtol=1e-9, atol=1e-12)
    # deleting the sweep deletes its members' models
    models = Path(live.settings.blob_dir) / "models"  # type: ignore[arg-type]
    members = [m["job_id"] for m in live.http.get(f"/v1/sweeps/{sweep_id}").json()["members"]]
    assert all((models / j / "final.npz").exists() for j in members)
    assert live.http.delete(f"/v1/sweeps/{sweep_id}").status_code == 204
    assert not any((models / j).exists() for j in members)


def test_a_job_failed_at_its_runtime_limit_keeps_its_model(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, workers=1, max_job_runtime_seconds=1.0)
    with LiveServer(settings) as server:
        job_id = server.http.post("/v1/jobs", json=LONG_SPEC).json()["id"]
        job = server.wait_for(job_id, TERMINAL, timeout=60)
        assert job["status"] == "failed" and job["stop_reason"] == "max_runtime"
        model = download(server, job_id)
        assert model.info["stop_reason"] == "max_runtime" and model.finite


@pytest.mark.integration
def test_celery_workers_on_postgresql_keep_the_model_and_export_the_history(
        cluster: Cluster) -> None:  # noqa: F811
    """The scale-out setup: `gradwatch worker` processes write the model to the shared blob
    directory; the API serves it, predicts with it, exports from PostgreSQL, deletes it."""
    job_id = cluster.submit({**CLASSIFIER, "training": {"epochs": 3, "batch_size": 32,
                                                        "validation_split": 0.25}})
    job = cluster.wait_terminal(job_id)
    assert job["status"] == "succeeded", job["error"]
    r = cluster.http.get(f"/v1/jobs/{job_id}/model")
    assert r.status_code == 200, r.text
    model = core.load_model(io.BytesIO(r.content))
    X = np.random.default_rng(3).uniform(-40, 40, size=(20, 2))
    body = cluster.http.post(f"/v1/jobs/{job_id}/predict", json={"X": X.tolist()}).json()
    assert np.array_equal(np.array(body["probabilities"]), model.predict(X))
    assert cluster.http.get(f"/v1/jobs/{job_id}/model", params={"which": "best"}
                            ).status_code == 200
    csv_text = cluster.http.get(f"/v1/jobs/{job_id}/metrics.csv").text
    assert len(csv_text.splitlines()) == 1 + job["progress"]["total_steps"]
    stored = cluster.tmp / "blobs" / "models" / job_id / "final.npz"
    assert stored.exists()
    assert cluster.http.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not stored.exists()


@pytest.mark.parametrize(("body", "where", "message"), [
    ({"X": [[1.0, 2.0], [3.0]]}, ["body", "X", 1], "has 1 values; row 0 has 2"),
    ({"X": [[1.0, "2"]]}, ["body", "X", 0, 1], "must be a number"),
    ({"X": [[1.0, "NaN"]]}, ["body", "X", 0, 1], "must be a number"),
    ({"X": [[1.0, True]]}, ["body", "X", 0, 1], "must be a number"),
    ({"X": [[1.0, 10**400]]}, ["body", "X", 0, 1], "finite"),
    ({"X": []}, ["body", "X"], "non-empty"),
    ({"X": [[]]}, ["body", "X", 0], "at least one value"),
    ({"X": [1.0, 2.0]}, ["body", "X", 0], "list of numbers"),
    ({"X": [[1.0]], "inputs": [[1.0]]}, ["body", "X"], "exactly one"),
    ({}, ["body", "X"], "exactly one"),
    ({"X": [[1.0]], "extra": 1}, ["body", "extra"], "unknown field"),
    ([[1.0]], ["body"], "JSON object"),
])
def test_bad_inputs_are_422_naming_the_place(client: TestClient, body: Any, where: list[Any],
                                             message: str) -> None:
    r = client.post(f"/v1/jobs/{UNKNOWN}/predict", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"] == where
    assert message in r.json()["detail"]


@pytest.mark.parametrize("raw", [b'{"X": [[1.0, NaN]]}', b'{"X": [[1.0, Infinity]]}',
                                 b'{"X": [[1.0, 1e999]]}', b'{"X": [[1.0, -1e999]]}'])
def test_nan_and_infinite_inputs_are_422(client: TestClient, raw: bytes) -> None:
    r = client.post(f"/v1/jobs/{UNKNOWN}/predict", content=raw,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "NaN" in r.json()["detail"] or "finite" in r.json()["detail"]


def test_inputs_are_counted_against_the_inline_limit_before_anything_else(
        make_client: Any) -> None:
    client = make_client(max_inline_values=1000)
    rows = [[1.0] * 10] * 100 + [[1.0] * 10] + [["not a number"] * 10] * 5
    r = client.post(f"/v1/jobs/{UNKNOWN}/predict", json={"X": rows})
    assert r.status_code == 422
    problem = r.json()
    assert problem["type"].endswith("/limit-exceeded") and problem["limit"] == 1000
    assert "GRADWATCH_MAX_INLINE_VALUES" in problem["detail"]
    assert client.post(f"/v1/jobs/{UNKNOWN}/predict",
                       json={"X": [[1.0] * 10] * 100}).status_code == 404  # at the limit: fine


def test_unknown_jobs_are_404_and_a_non_json_body_is_415(client: TestClient) -> None:
    r = client.get(f"/v1/jobs/{UNKNOWN}/model")
    assert r.status_code == 404 and r.json()["type"].endswith("/job-not-found")
    r = client.post(f"/v1/jobs/{UNKNOWN}/predict", json={"X": [[1.0]]})
    assert r.status_code == 404
    r = client.post(f"/v1/jobs/{UNKNOWN}/predict", content=b"1,2",
                    headers={"Content-Type": "text/csv"})
    assert r.status_code == 415
    r = client.get(f"/v1/jobs/{UNKNOWN}/model", params={"which": "worst"})
    assert r.status_code == 422
