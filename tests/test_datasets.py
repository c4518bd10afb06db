"""Uploaded data sets: formats, content checks, limits, tenancy, quota, delete, use in specs.

Every refused upload also checks that nothing was left behind: no blob, no staging file, no
database row.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.deps import require_api_key
from app.errors import ProblemError
from app.models import Dataset, Job
from app.tenancy import Principal
from app.uploads import CsvPart, UploadLimits

CSV = "a,b,label\n" + "".join(f"{i / 10},{(i % 7) - 3},{i % 3}\n" for i in range(60))


def _files(client: TestClient) -> list[str]:
    root = client.app.state.settings.blob_dir  # type: ignore[attr-defined]
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _rows(client: TestClient) -> int:
    with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return int(session.scalar(select(func.count()).select_from(Dataset)) or 0)


def _nothing_left(client: TestClient, before: tuple[list[str], int]) -> None:
    assert (_files(client), _rows(client)) == before
    assert not [f for f in _files(client) if f.startswith(".staging")]


def upload_csv(client: TestClient, body: str | bytes = CSV, **params: Any) -> Any:
    params.setdefault("task", "classification")
    return client.post("/v1/datasets", params=params, content=body,
                       headers={"Content-Type": "text/csv"})


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(a: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_csv_upload_is_stored_as_a_normalised_npz_with_its_hash(client: TestClient) -> None:
    r = upload_csv(client, name="toy set", target="label")
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["sha256"] == hashlib.sha256(CSV.encode()).hexdigest()
    assert (body["n_samples"], body["n_features"], body["n_classes"]) == (60, 2, 3)
    assert body["feature_names"] == ["a", "b"] and body["target_name"] == "label"
    assert _files(client) == [f"datasets/{body['id']}.npz"]
    root = client.app.state.settings.blob_dir  # type: ignore[attr-defined]
    with np.load(root / "datasets" / f"{body['id']}.npz") as npz:
        assert npz["X"].dtype == np.float64 and npz["X"].shape == (60, 2)
        assert npz["X"][5].tolist() == [0.5, 2.0]
        assert npz["y"].dtype == np.int64 and npz["y"][:4].tolist() == [0, 1, 2, 0]
    assert client.get(f"/v1/datasets/{body['id']}").json() == body


def test_target_column_can_be_any_column_and_multipart_form_fields_work(
        client: TestClient) -> None:
    r = client.post("/v1/datasets", files={"file": ("data.csv", CSV.encode(), "text/csv")},
                    data={"task": "regression", "target": "a", "name": "as regression"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["task"] == "regression" and body["feature_names"] == ["b", "label"]
    assert body["n_classes"] is None and body["n_targets"] == 1


def test_npz_and_npy_pair_uploads(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)).astype(np.float32), rng.normal(size=(40, 2))
    r = client.post("/v1/datasets", params={"task": "regression"}, content=_npz(X=X, y=y),
                    headers={"Content-Type": "application/x-npz"})
    assert r.status_code == 201, r.text
    assert (r.json()["n_features"], r.json()["n_targets"], r.json()["dtype"]) == (5, 2, "float32")
    labels = np.arange(40) % 4
    r = client.post("/v1/datasets", params={"task": "classification"},
                    files={"X": ("X.npy", _npy(X)), "y": ("y.npy", _npy(labels))})
    assert r.status_code == 201, r.text
    assert (r.json()["format"], r.json()["n_classes"]) == ("npy", 4)
    r = client.post("/v1/datasets", params={"task": "classification", "format": "npz"},
                    content=_npz(X=X, y=labels.astype(np.float64)),
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text  # integral float labels are labels


BAD_UPLOADS: list[tuple[str, dict[str, Any], bytes, str, int, str]] = [
    ("nan cell", {}, b"a,b\n1,2\nnan,1\n", "text/csv", 422, "line 3, column 'a'"),
    ("empty cell", {}, b"a,b\n1,2\n,1\n", "text/csv", 422, "is empty"),
    ("text cell", {}, b"a,b\n1,2\nx,1\n", "text/csv", 422, "not a number"),
    ("ragged row", {}, b"a,b\n1,2\n3,4,5\n4,5\n", "text/csv", 422, "line 3 has 3 values"),
    ("one row", {}, b"a,b\n1,0\n", "text/csv", 422, "at least 2 rows"),
    ("fractional label", {}, b"a,b\n1,0.5\n2,1\n", "text/csv", 422, "integers"),
    ("negative label", {}, b"a,b\n1,-1\n2,1\n", "text/csv", 422, ">= 0"),
    ("one class", {}, b"a,b\n1,1\n2,1\n", "text/csv", 422, "2 distinct"),
    ("unknown target", {"target": "zzz"}, CSV.encode(), "text/csv", 422, "'zzz'"),
    ("not utf-8", {}, b"a,b\n\xff\xfe,1\n", "text/csv", 422, "UTF-8"),
    ("empty", {}, b"", "text/csv", 422, "empty"),
    ("path-like name", {"name": "../../etc/passwd"}, CSV.encode(), "text/csv", 422, "path"),
    ("hidden name", {"name": ".bashrc"}, CSV.encode(), "text/csv", 422, "name"),
    ("no task", {"task": None}, CSV.encode(), "text/csv", 422, "task"),
    ("not a zip", {}, b"PK\x03\x04 nonsense", "application/x-npz", 422, "npz"),
    ("npz without y", {}, _npz(X=np.ones((3, 2))), "application/x-npz", 422, "'y'"),
    ("npz object array", {}, _npz(X=np.ones((3, 2)), y=np.array(["a", "b", "c"])),
     "application/x-npz", 422, "dtype"),
    ("npz nan", {"task": "regression"}, _npz(X=np.array([[1.0], [np.nan]]), y=np.ones(2)),
     "application/x-npz", 422, "X row 1, column 0"),
    ("npz 3-d", {}, _npz(X=np.ones((2, 2, 2)), y=np.ones(2)), "application/x-npz", 422,
     "dimensions"),
    ("json body", {}, b"{}", "application/json", 415, "multipart"),
    ("octet-stream without format", {}, b"a,b\n1,2\n3,4\n", "application/octet-stream", 422,
     "needs ?format=csv|npz"),
]


@pytest.mark.parametrize(("case", "params", "body", "content_type", "status", "needle"),
                         BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_a_bad_upload_is_a_clear_4xx_and_leaves_nothing_behind(
        client: TestClient, case: str, params: dict[str, Any], body: bytes, content_type: str,
        status: int, needle: str) -> None:
    before = (_files(client), _rows(client))
    query = {"task": "classification", **params}
    r = client.post("/v1/datasets", params={k: v for k, v in query.items() if v is not None},
                    content=body, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert needle in r.json()["detail"], r.json()["detail"]
    assert "Traceback" not in r.text and "/tmp" not in r.text
    _nothing_left(client, before)


LIMITS: list[tuple[str, dict[str, Any], Callable[[], bytes], int, str]] = [
    ("bytes", {"max_upload_bytes": 4096}, lambda: b"a,b\n" + b"1,0\n2,1\n" * 1000, 413,
     "GRADWATCH_MAX_UPLOAD_BYTES"),
    ("rows", {"max_upload_rows": 10}, lambda: b"a,b\n" + b"1,0\n2,1\n" * 6, 422,
     "GRADWATCH_MAX_UPLOAD_ROWS"),
    ("columns", {"max_upload_columns": 5}, lambda: b"a,b,c,d,e,f\n1,2,3,4,5,0\n", 422,
     "GRADWATCH_MAX_UPLOAD_COLUMNS"),
    ("huge header", {"max_upload_line_bytes": 1000},
     lambda: b",".join(b"c%d" % i for i in range(100_000)) + b"\n", 422,
     "GRADWATCH_MAX_UPLOAD_LINE_BYTES"),
    ("values", {"max_data_values": 100}, lambda: b"a,b\n" + b"1,0\n2,1\n" * 30, 422,
     "GRADWATCH_MAX_DATA_VALUES"),
    ("classes", {"max_upload_classes": 5}, lambda: b"a,b\n1,0\n2,9\n", 422,
     "GRADWATCH_MAX_UPLOAD_CLASSES"),
    ("npz rows (checked from the header, before the values)", {"max_upload_rows": 10},
     lambda: _npz(X=np.ones((50, 2)), y=np.zeros(50)), 422, "GRADWATCH_MAX_UPLOAD_ROWS"),
]


@pytest.mark.parametrize(("case", "overrides", "make_body", "status", "needle"), LIMITS,
                         ids=[c[0] for c in LIMITS])
def test_each_upload_limit_is_named_and_leaves_nothing_behind(
        make_client: Callable[..., TestClient], case: str, overrides: dict[str, Any],
        make_body: Callable[[], bytes], status: int, needle: str) -> None:
    client = make_client(**overrides)
    before = (_files(client), _rows(client))
    body = make_body()
    content_type = "application/x-npz" if body.startswith(b"PK") else "text/csv"
    r = client.post("/v1/datasets", params={"task": "classification"}, content=body,
                    headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert r.json()["limit"] > 0
    _nothing_left(client, before)


def test_a_chunked_upload_past_the_byte_limit_is_refused_while_reading(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_bytes=64 * 1024)
    sent = 0

    def body() -> Any:
        nonlocal sent
        yield b"a,b\n"
        for _ in range(10_000):  # 80 MB if it were all read
            sent += 8192
            yield b"1,0\n" * 2048

    before = (_files(client), _rows(client))
    r = client.post("/v1/datasets", params={"task": "classification"}, content=body(),
                    headers={"Content-Type": "text/csv"})
    assert r.status_code == 413
    assert "GRADWATCH_MAX_UPLOAD_BYTES" in r.json()["detail"]
    _nothing_left(client, before)


def test_uploads_are_exempt_from_the_json_body_limit_but_jobs_are_not(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_body_bytes=2048)
    big = "a,b\n" + "".join(f"{i},{i % 2}\n" for i in range(2000))
    assert upload_csv(client, big).status_code == 201
    assert client.post("/v1/jobs", content=b"{" + b" " * 4096 + b"}",
                       headers={"Content-Type": "application/json"}).status_code == 413


def test_list_shows_builtins_then_uploads_paged(client: TestClient) -> None:
    ids = [upload_csv(client, name=f"set {i}").json()["id"] for i in range(3)]
    first = client.get("/v1/datasets", params={"limit": 2}).json()
    sources = {d["source"] for d in first["datasets"]}
    assert {"synthetic", "builtin", "uploaded"} <= sources
    uploaded = [d["id"] for d in first["datasets"] if d["source"] == "uploaded"]
    assert uploaded == ids[::-1][:2]
    second = client.get("/v1/datasets", params={"limit": 2, "cursor": first["next_cursor"]})
    assert [d["id"] for d in second.json()["datasets"]] == [ids[0]]
    assert second.json()["next_cursor"] is None


def test_another_tenants_data_set_is_a_404_everywhere(client: TestClient) -> None:
    app = client.app
    app.dependency_overrides[require_api_key] = lambda: Principal("acme")  # type: ignore[attr-defined]
    try:
        own = upload_csv(client).json()["id"]
        app.dependency_overrides[require_api_key] = lambda: Principal("globex")  # type: ignore[attr-defined]
        assert client.get(f"/v1/datasets/{own}").status_code == 404
        assert client.delete(f"/v1/datasets/{own}").status_code == 404
        assert own not in {d.get("id") for d in client.get("/v1/datasets").json()["datasets"]}
        spec = {"data": {"source": "uploaded", "id": own}}
        for path in ("/v1/jobs", "/v1/preflight"):
            r = client.post(path, json=spec)
            assert r.status_code == 422 and "no uploaded data set" in r.json()["detail"]
        # giving the shape by hand does not get around the check
        r = client.post("/v1/jobs", json={"data": {**spec["data"], "task": "classification",
                                                   "n_samples": 60, "n_features": 2,
                                                   "n_classes": 3}})
        assert r.status_code == 422
    finally:
        app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert client.get(f"/v1/datasets/{own}").status_code == 200  # the admin sees all


def test_tenant_upload_quota_is_a_429_with_retry_after(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client(tenant_max_upload_bytes=3000)
    client.app.dependency_overrides[require_api_key] = lambda: Principal("acme")  # type: ignore[attr-defined]
    assert upload_csv(client).status_code == 201  # ~2.3 kB stored
    before = (_files(client), _rows(client))
    r = upload_csv(client)
    assert r.status_code == 429
    assert r.headers["retry-after"].isdigit()
    assert "GRADWATCH_TENANT_MAX_UPLOAD_BYTES" in r.json()["detail"] and r.json()["limit"] == 3000
    _nothing_left(client, before)
    client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert upload_csv(client).status_code == 201  # the admin has no quota


def test_a_spec_uses_the_data_set_and_mismatches_are_named(client: TestClient) -> None:
    ds = upload_csv(client).json()
    r = client.post("/v1/jobs", json={"data": {"source": "uploaded", "id": ds["id"]},
                                      "training": {"epochs": 1}})
    assert r.status_code == 202, r.text
    data = r.json()["spec"]["data"]
    assert (data["n_features"], data["n_classes"], data["n_samples"]) == (2, 3, 60)
    with client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert session.get(Job, r.json()["id"]).dataset_id == ds["id"]
    r = client.post("/v1/jobs", json={"data": {"source": "uploaded", "id": ds["id"],
                                               "n_features": 3}})
    assert r.status_code == 422 and "n_features=2" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"data": {"source": "uploaded", "id": ds["id"]},
                                      "loss": "binary_cross_entropy"})
    assert r.status_code == 422 and "exactly 2 classes" in r.json()["detail"]
    reg = upload_csv(client, task="regression").json()["id"]
    r = client.post("/v1/jobs", json={"data": {"source": "uploaded", "id": reg},
                                      "loss": "cross_entropy"})
    assert r.status_code == 422 and "regression" in r.json()["detail"]
    r = client.post("/v1/preflight", json={"data": {"source": "uploaded", "id": ds["id"]}})
    assert r.status_code == 200 and r.json()["measured_amplification"] is not None
    r = client.post("/v1/jobs", json={"data": {"source": "uploaded", "id": "nope"}})
    assert r.status_code == 422 and "no uploaded data set with id 'nope'" in r.json()["detail"]


def test_delete_is_a_409_while_a_job_uses_it_then_removes_blob_and_row(
        client: TestClient) -> None:
    before = (_files(client), _rows(client))
    ds = upload_csv(client).json()["id"]
    job = client.post("/v1/jobs", json={"data": {"source": "uploaded", "id": ds}}).json()
    r = client.delete(f"/v1/datasets/{ds}")
    assert r.status_code == 409 and job["id"] in r.json()["detail"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
    assert client.delete(f"/v1/datasets/{ds}").status_code == 204
    assert client.get(f"/v1/datasets/{ds}").status_code == 404
    assert client.delete(f"/v1/datasets/{ds}").status_code == 404
    _nothing_left(client, before)


def test_a_repair_may_use_its_parents_data_set_and_no_other(client: TestClient) -> None:
    ds = upload_csv(client).json()["id"]
    other = upload_csv(client).json()["id"]
    parent = client.post("/v1/jobs", json={"data": {"source": "uploaded", "id": ds}}).json()
    r = client.post(f"/v1/jobs/{parent['id']}/repair",
                    json={"spec_patch": {"optimizer": {"lr": 0.001}}})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["data"]["id"] == ds
    r = client.post(f"/v1/jobs/{parent['id']}/repair",
                    json={"spec_patch": {"data": {"id": other}}})
    assert r.status_code == 422 and "no uploaded data set" in r.json()["detail"]


def test_a_sweep_on_an_uploaded_data_set_gives_every_member_its_shape(
        client: TestClient) -> None:
    ds = upload_csv(client).json()["id"]
    r = client.post("/v1/sweeps", json={
        "spec": {"data": {"source": "uploaded", "id": ds}, "optimizer": {"name": "sgd"}},
        "axes": [{"path": "optimizer.lr", "values": [0.1, 0.01]}]})
    assert r.status_code == 202, r.text
    for member in r.json()["members"]:
        job = client.get(f"/v1/jobs/{member['job_id']}").json()
        data = job["spec"]["data"]
        assert (data["id"], data["n_features"], data["n_classes"]) == (ds, 2, 3)
    # queued members use the data set: it cannot go
    assert client.delete(f"/v1/datasets/{ds}").status_code == 409
    r = client.post("/v1/sweeps", json={
        "spec": {"data": {"source": "uploaded", "id": "nope"}, "optimizer": {"name": "sgd"}},
        "axes": [{"path": "optimizer.lr", "values": [0.1, 0.01]}]})
    assert r.status_code == 422 and "no uploaded data set with id 'nope'" in r.json()["detail"]


@settings(max_examples=60, deadline=None)
@given(table=st.integers(2, 30).flatmap(lambda n: st.lists(
           st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=3, max_size=3),
           min_size=n, max_size=n)),
       cuts=st.lists(st.integers(1, 97), max_size=20), crlf=st.booleans())
def test_csv_parsing_is_exact_whatever_the_chunk_boundaries(
        table: list[list[float]], cuts: list[int], crlf: bool) -> None:
    end = "\r\n" if crlf else "\n"
    text = ("p,q,target" + end + "".join(",".join(repr(v) for v in row) + end
                                         for row in table)).encode()
    part = CsvPart(UploadLimits(max_bytes=10**9, max_rows=1000, max_columns=10,
                                max_line_bytes=10_000, max_values=10**6, max_classes=100))
    position = 0
    for cut in cuts:  # feed the body in arbitrary pieces, as a network would
        part.write(text[position:position + cut])
        position += cut
    part.write(text[position:])
    parsed = part.parsed("target")
    expected = np.array(table, dtype=np.float64)
    assert parsed.X.tobytes() == expected[:, :2].tobytes()  # bit for bit, -0.0 included
    assert parsed.y.tobytes() == expected[:, 2].tobytes()
    assert part.sha256.hexdigest() == hashlib.sha256(text).hexdigest()


def test_a_bad_cell_deep_in_a_streamed_csv_is_named_by_its_line() -> None:
    limits = UploadLimits(max_bytes=10**9, max_rows=10**6, max_columns=10,
                          max_line_bytes=10_000, max_values=10**7, max_classes=100)
    good = b"".join(b"%d,%d,%d\n" % (i, -i, i % 2) for i in range(5000))
    body = b"a,b,c\n" + good + b"1,oops,0\n" + good
    part = CsvPart(limits)
    with pytest.raises(ProblemError) as caught:
        for i in range(0, len(body), 4096):  # blocks of plain rows take the fast path
            part.write(body[i:i + 4096])
        part.parsed(None)
    assert caught.value.detail == "line 5002, column 'b' holds 'oops', which is not a number"
    ragged = b"a,b,c\n" + good + b"1,2\n"
    part = CsvPart(limits)
    with pytest.raises(ProblemError) as caught:
        part.write(ragged)
        part.parsed(None)
    assert caught.value.detail.startswith("line 5002 has 2 values")


def test_quoted_cells_and_crlf_lines_are_read_line_by_line(client: TestClient) -> None:
    r = upload_csv(client, b'"a","b"\r\n"1.5","0"\r\n"2",1\r\n\r\n')
    assert r.status_code == 201, r.text
    assert r.json()["feature_names"] == ["a"] and r.json()["n_samples"] == 2


X20 = np.random.default_rng(3).normal(size=(20, 3))
BAD_FORMS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("X without y", {"X": ("X.npy", _npy(X20))}, {}, "needs both parts"),
    ("rows differ", {"X": ("X.npy", _npy(X20)), "y": ("y.npy", _npy(np.zeros(19)))}, {},
     "X has 20 rows but y has shape (19,)"),
    ("1-d X", {"X": ("X.npy", _npy(X20[:, 0])), "y": ("y.npy", _npy(np.arange(20) % 2))}, {},
     "X must be 2-D"),
    ("unknown part", {"photo": ("a.png", b"\x89PNG")}, {}, "unexpected form part 'photo'"),
    ("format unknown", {"file": ("data.bin", b"a,b\n1,0\n")}, {}, "cannot tell the format"),
    ("truncated npy", {"X": ("X.npy", _npy(X20)[:-40]), "y": ("y.npy", _npy(np.zeros(20)))},
     {}, "truncated"),
    ("task in the form, wrongly", {"file": ("d.csv", CSV.encode(), "text/csv")},
     {"task": "clustering"}, "task must be classification or regression"),
    ("path-like name in the form", {"file": ("d.csv", CSV.encode(), "text/csv")},
     {"task": "classification", "name": "a/../../b"}, "not a path"),
]


@pytest.mark.parametrize(("case", "files", "form", "needle"), BAD_FORMS,
                         ids=[c[0] for c in BAD_FORMS])
def test_a_bad_multipart_upload_is_a_422_and_leaves_nothing_behind(
        client: TestClient, case: str, files: dict[str, Any], form: dict[str, Any],
        needle: str) -> None:
    before = (_files(client), _rows(client))
    params = {} if "task" in form else {"task": "classification"}
    r = client.post("/v1/datasets", params=params, files=files, data=form)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"], r.json()["detail"]
    _nothing_left(client, before)
