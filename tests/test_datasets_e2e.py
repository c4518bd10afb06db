"""Uploaded data sets end to end: a real server, real worker processes, real sockets.

* upload a CSV, train a job on it in a local worker process, read its history;
* the API's provisional diagnosis of such a job knows the data's scale, as the worker's does;
* a 2 GB upload (declared, or streamed chunked with no length) against a `gradwatch serve`
  process capped by RLIMIT_DATA: refused with 413 after at most a few MB, the server alive,
  nothing left on disk or in the database.
"""

from __future__ import annotations

import io
import select
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import core
from tests.conftest import LiveServer, Server

GiB = 1024**3


def test_train_a_job_on_an_uploaded_csv(live: LiveServer) -> None:
    rows = "".join(f"{x / 10:.2f},{(x * 7 % 13) / 13:.3f},{int(x % 20 >= 10)}\n"
                   for x in range(200))
    r = live.http.post("/v1/datasets", params={"task": "classification", "name": "e2e csv"},
                       content="x1,x2,cls\n" + rows, headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    ds = r.json()
    spec = {"data": {"source": "uploaded", "id": ds["id"], "standardize": True},
            "model": {"hidden": [{"units": 16, "activation": "tanh"}]},
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 5, "batch_size": 20, "validation_split": 0.2}}
    job = live.http.post("/v1/jobs", json=spec).json()
    done = live.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, timeout=90)
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == 5 * 8  # 160 training rows / 20
    grads = live.http.get(f"/v1/jobs/{job['id']}/gradients").json()
    assert [layer["layer"] for layer in grads["layers"]] == [0, 1]
    norms = grads["layers"][0]["series"]["grad_norm"]
    assert norms["steps"] == list(range(40)) and all(v > 0 for v in norms["values"])
    metrics = live.http.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert len(metrics["epochs"]["epoch"]) == 5
    # the trained model: downloaded, read offline by core alone, and asked through the API
    # (inline rows, and the uploaded set itself) — the same numbers everywhere
    r = live.http.get(f"/v1/jobs/{job['id']}/model")
    assert r.status_code == 200, r.text
    model = core.load_model(io.BytesIO(r.content))
    data = model.spec.model_dump()["data"]  # self-contained: validates offline, no server
    assert (data["source"], data["id"], data["n_features"]) == ("uploaded", ds["id"], 2)
    X = np.array([[float(v) for v in line.split(",")[:2]] for line in rows.splitlines()])
    offline = model.predict(X)
    assert offline.shape == (200, 2) and np.all(np.isfinite(offline))
    inline = live.http.post(f"/v1/jobs/{job['id']}/predict", json={"X": X.tolist()}).json()
    assert np.array_equal(np.array(inline["probabilities"]), offline)  # bit for bit
    by_set = live.http.post(f"/v1/jobs/{job['id']}/predict", json={"dataset_id": ds["id"]})
    assert by_set.status_code == 200, by_set.text
    assert np.array_equal(np.array(by_set.json()["probabilities"]), offline)
    assert by_set.json()["predictions"] == offline.argmax(axis=1).tolist()
    unknown = live.http.post(f"/v1/jobs/{job['id']}/predict",
                             json={"dataset_id": "00000000-0000-0000-0000-000000000000"})
    assert unknown.status_code == 404, unknown.text
    # finished: the data set may go now, the job and its history stay
    assert live.http.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert live.http.get(f"/v1/jobs/{job['id']}/gradients").status_code == 200


def test_a_sweep_trains_on_an_uploaded_data_set(live: LiveServer) -> None:
    """Members on an uploaded set train batched in a real worker (the set read once)."""
    rows = "".join(f"{x / 10:.2f},{(x * 3 % 11) / 11:.3f},{int(x % 16 >= 8)}\n"
                   for x in range(96))
    ds = live.http.post("/v1/datasets", params={"task": "classification"},
                        content="a,b,c\n" + rows, headers={"Content-Type": "text/csv"}).json()
    r = live.http.post("/v1/sweeps", json={
        "spec": {"data": {"source": "uploaded", "id": ds["id"], "standardize": True},
                 "optimizer": {"name": "sgd"}, "training": {"epochs": 2, "batch_size": 16}},
        "axes": [{"path": "optimizer.lr", "values": [0.01, 0.1]},
                 {"path": "seed", "values": [0, 1]}]})
    assert r.status_code == 202, r.text
    for member in r.json()["members"]:
        job = live.wait_for(member["job_id"], {"succeeded", "failed", "cancelled"}, timeout=120)
        assert job["status"] == "succeeded", job
        assert job["progress"]["step"] == 2 * 5  # 2 epochs x ceil(77 training rows / 16)


def test_the_provisional_diagnosis_knows_the_uploaded_data_sets_scale(live: LiveServer) -> None:
    """Unstandardised inputs of order 1e3: the API's diagnosis of the running job (no arrays
    in its spec) carries the same data-scale finding as the worker's final one."""
    rows = "".join(f"{1000 + 10 * x},{500 * (x % 7)},{x % 2}\n" for x in range(100))
    ds = live.http.post("/v1/datasets", params={"task": "classification"},
                        content="a,b,c\n" + rows, headers={"Content-Type": "text/csv"}).json()
    spec = {"data": {"source": "uploaded", "id": ds["id"]},
            "model": {"hidden": [{"units": 8, "activation": "tanh"}]},
            "optimizer": {"name": "adam", "lr": 0.001},
            "training": {"epochs": 5000, "batch_size": 10, "validation_split": 0.0},
            "monitor": {"stop_on_explosion": False}}
    job = live.http.post("/v1/jobs", json=spec).json()
    deadline = time.monotonic() + 60
    while live.http.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] < 50:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    provisional = live.http.get(f"/v1/jobs/{job['id']}/diagnostics").json()
    assert live.http.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
    done = live.wait_for(job["id"], {"succeeded", "failed", "cancelled"}, timeout=60)
    assert done["status"] == "cancelled", done
    final = live.http.get(f"/v1/jobs/{job['id']}/diagnostics").json()
    assert provisional["final"] is False and final["final"] is True
    scale = [f for f in provisional["findings"] if f["kind"] == "data_scale"]
    assert scale == [f for f in final["findings"] if f["kind"] == "data_scale"]
    assert scale and scale[0]["evidence"]["input_rms"] > 1000, provisional["findings"]


def _request(port: int, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "POST /v1/datasets?task=classification HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    return sock


def _status(sock: socket.socket) -> tuple[int, str]:
    """The response's status and text (headers, then content-length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data.decode(errors="replace")


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next((int(line.split(":")[1]) for line in head.split("\r\n")
                 if line.startswith("content-length:")), 0)


def _stream_until_answered(sock: socket.socket, total: int) -> int:
    """Send a chunked body of ``total`` bytes of CSV rows until the server answers; the bytes
    sent."""
    sock.sendall(b"4\r\na,b\n\r\n")
    piece = b"1.00000000000000,0\n" * 3449  # ~64 KiB: rows stay under the row limit
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    while sent < total:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    return sent


def _leftovers(data_dir: Path) -> tuple[list[str], int]:
    blobs = data_dir / "blobs"
    files = sorted(p.relative_to(blobs).as_posix() for p in blobs.rglob("*") if p.is_file()
                   ) if blobs.exists() else []
    with sqlite3.connect(data_dir / "gradwatch.db") as db:
        rows = db.execute("select count(*) from datasets").fetchone()[0]
    return files, rows


def test_a_2gb_upload_is_refused_early_and_leaves_nothing(
        capped_server: Callable[..., Server]) -> None:
    limit = 8 * 1024**2
    server = capped_server(GRADWATCH_MAX_UPLOAD_BYTES=limit)
    data_dir = Path(server.env["GRADWATCH_DATA_DIR"])

    # declared: refused from the Content-Length alone, before a byte of the body is sent
    with _request(server.port, {"Content-Type": "text/csv",
                                "Content-Length": str(2 * GiB)}) as sock:
        status, text = _status(sock)
    assert status == 413 and "GRADWATCH_MAX_UPLOAD_BYTES" in text

    # streamed without a length (an npz goes to a staging file): refused while reading
    for content_type in ("text/csv", "application/x-npz"):
        with _request(server.port, {"Content-Type": content_type,
                                    "Transfer-Encoding": "chunked"}) as sock:
            sent = _stream_until_answered(sock, 2 * GiB)
            status, text = _status(sock)
        assert status == 413 and "GRADWATCH_MAX_UPLOAD_BYTES" in text
        assert sent < 16 * limit  # stopped near the limit, nowhere near 2 GB
    # a client that goes away halfway: nothing of its upload stays
    for content_type in ("text/csv", "application/x-npz"):
        with _request(server.port, {"Content-Type": content_type,
                                    "Transfer-Encoding": "chunked"}) as sock:
            _stream_until_answered(sock, 2 * 1024**2)
    time.sleep(1)  # the server notices the disconnect
    assert server.alive()
    assert _leftovers(data_dir) == ([], 0)
    r = server.http.post("/v1/datasets", params={"task": "classification"},
                         content="a,b\n1,0\n2,1\n", headers={"Content-Type": "text/csv"})
    assert r.status_code == 201  # still serving uploads
