"""The blob store keeps nothing a crash left behind: orphan data set blobs and models,
abandoned staging files and empty model directories go (at start-up and with `gradwatch gc`),
never anything younger than the grace period or anything a row refers to; a deleted job takes
its model directory with it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SMALL_SPEC, make_settings
from fastapi.testclient import TestClient

from app.blob_gc import collect_garbage
from app.blobstore import LocalBlobStore
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings

CSV = "a,b,label\n" + "".join(f"{i / 10},{(i % 7) - 3},{i % 3}\n" for i in range(60))
HOURS_AGO = 2 * 3600


def _put(store: LocalBlobStore, key: str, data: bytes = b"blob") -> Path:
    """Publish a blob through the store, as an upload or a worker does."""
    with store.staging() as staged:
        staged.write_bytes(data)
        store.put(key, staged)
    return store.root / key


def _age(path: Path, seconds: float = HOURS_AGO) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _abandoned_staging_file(store: LocalBlobStore) -> Path:
    """What an upload killed mid-way leaves: a staging file of its own."""
    store.root.joinpath(".staging").mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=store.root / ".staging", prefix="upload-")
    os.write(fd, b"half an upload")
    os.close(fd)
    return Path(name)


class Leftovers:
    """A data directory after some crashes, next to things that must survive."""

    def __init__(self, settings: Settings) -> None:
        assert settings.blob_dir is not None
        self.store = LocalBlobStore(settings.blob_dir)
        with TestClient(create_app(settings)) as client:
            r = client.post("/v1/datasets", params={"task": "classification"}, content=CSV,
                            headers={"Content-Type": "text/csv"})
            assert r.status_code == 201, r.text
            self.dataset_id = r.json()["id"]
            job = client.post("/v1/jobs", json=SMALL_SPEC).json()
            self.job_id = job["id"]
        store = self.store
        young = f"datasets/{uuid.uuid4()}.npz"  # an orphan, but young: its upload may commit
        self.kept = {
            f"datasets/{self.dataset_id}.npz",  # its row exists
            f"models/{self.job_id}/final.npz",  # its job exists
            young,
        }
        _put(store, f"models/{self.job_id}/final.npz")
        _put(store, young)
        self.orphans = {  # published, then the process died before the commit (or after
            f"datasets/{uuid.uuid4()}.npz",  # a delete's commit)
            f"models/{uuid.uuid4()}/final.npz",
            f"models/{uuid.uuid4()}/best.npz",
        }
        for key in self.orphans:
            _age(_put(store, key, b"x" * 100))
        _age(store.root / f"datasets/{self.dataset_id}.npz")  # old, but referenced
        _age(store.root / f"models/{self.job_id}/final.npz")
        self.staging = _abandoned_staging_file(store)
        _age(self.staging)
        self.fresh_staging = _abandoned_staging_file(store)  # an upload in progress
        self.empty_dir = store.root / "models" / str(uuid.uuid4())
        self.empty_dir.mkdir()
        _age(self.empty_dir)
        for key in self.orphans:  # their directories were just changed by the put
            if key.startswith("models/"):
                _age((store.root / key).parent)


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    env.update(DATABASE_URL=settings.url, GRADWATCH_DATA_DIR=str(settings.data_dir),
               GRADWATCH_LOG_FORMAT="text")
    return env


def _gc(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", "gc", *args], capture_output=True,
                          text=True, env=_env(settings), timeout=120)


def test_start_up_removes_orphans_and_abandoned_staging_files_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, blob_gc_on_start=False)
    left = Leftovers(settings)
    root = left.store.root
    before = _files(root)
    assert left.orphans <= before and left.kept <= before
    with caplog.at_level(logging.INFO, logger="app.blob_gc"), \
            TestClient(create_app(make_settings(tmp_path))) as client:
        assert _files(root) == before - left.orphans - {
            f".staging/{left.staging.name}"}
        assert not left.empty_dir.exists()
        assert not any((root / key).parent.exists() for key in left.orphans
                       if key.startswith("models/"))
        assert (root / "models").is_dir() and left.fresh_staging.exists()
        # what survived still works
        assert client.get(f"/v1/datasets/{left.dataset_id}").status_code == 200
        spec = {**SMALL_SPEC, "data": {"source": "uploaded", "id": left.dataset_id}}
        assert client.post("/v1/jobs", json=spec).status_code == 202
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert all(any(key in line for line in removed) for key in left.orphans), removed
    assert any("removed 5 item(s), 314 bytes" in line for line in removed), removed


def test_gc_command_lists_with_dry_run_then_removes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, blob_gc_on_start=False)
    left = Leftovers(settings)
    root = left.store.root
    before = _files(root)
    dry = _gc(settings, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _files(root) == before and left.empty_dir.exists()
    for key in left.orphans:
        assert f"would remove {'dataset' if key.startswith('datasets') else 'model'} {key}" \
               in dry.stdout
    assert f"would remove staging {left.staging.name}" in dry.stdout
    assert not any(key in dry.stdout for key in left.kept)
    done = _gc(settings)
    assert done.returncode == 0, done.stderr
    assert "removed 5 item(s), 314 bytes" in done.stdout  # 3 orphans, a staging file, a dir
    assert f"removed directory models/{left.empty_dir.name}" in done.stdout
    assert _files(root) == before - left.orphans - {f".staging/{left.staging.name}"}
    again = _gc(settings)
    assert again.returncode == 0 and "removed 0 item(s)" in again.stdout
    # a shorter grace period reaches the young orphan (and the fresh staging file)
    young = _gc(settings, "--grace-seconds", "0")
    assert young.returncode == 0
    assert _files(root) == {f"datasets/{left.dataset_id}.npz", f"models/{left.job_id}/final.npz"}
    assert _gc(settings, "--grace-seconds", "-1").returncode == 2


def test_a_database_without_jobs_or_data_sets_removes_no_blob_unless_forced(
        tmp_path: Path) -> None:
    """Another database (or another GRADWATCH_BLOB_DIR) would make every blob an orphan."""
    settings = make_settings(tmp_path)
    upgrade(settings.url)
    assert settings.blob_dir is not None
    store = LocalBlobStore(settings.blob_dir)
    blob = _put(store, f"datasets/{uuid.uuid4()}.npz")
    _age(blob)
    staging = _abandoned_staging_file(store)
    _age(staging)
    refused = _gc(settings)
    assert refused.returncode == 1 and blob.exists() and not staging.exists()
    assert "is GRADWATCH_BLOB_DIR this database's?" in refused.stdout
    with TestClient(create_app(settings)):  # start-up: the same guard
        assert blob.exists()
    forced = _gc(settings, "--force")
    assert forced.returncode == 0 and not blob.exists()


def test_collect_garbage_never_touches_files_that_are_not_blob_keys(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    client.post("/v1/jobs", json=SMALL_SPEC)  # the database is not empty
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert settings.blob_dir is not None
    store = LocalBlobStore(settings.blob_dir)
    strangers = [store.root / "datasets" / "README.TXT", store.root / ".staging" / "notes",
                 store.root / "other" / "x.npz"]
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not ours")
        _age(path)
    report = collect_garbage(store, client.app.state.sessionmaker,  # type: ignore[attr-defined]
                             grace_seconds=60)
    assert report.removed == [] and all(path.exists() for path in strangers)


def test_deleting_a_job_removes_its_model_directory(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert settings.blob_dir is not None
    store = LocalBlobStore(settings.blob_dir)
    job_id = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    other = client.post("/v1/jobs", json=SMALL_SPEC).json()["id"]
    for which in ("final", "best"):
        _put(store, f"models/{job_id}/{which}.npz")
    _put(store, f"models/{other}/final.npz")
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    models = store.root / "models"
    assert not (models / job_id).exists()
    assert sorted(p.name for p in models.iterdir()) == [other]  # models/ itself stays


def test_deleting_a_data_set_keeps_the_datasets_directory(
        make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    r = client.post("/v1/datasets", params={"task": "classification"}, content=CSV,
                    headers={"Content-Type": "text/csv"})
    dataset_id = r.json()["id"]
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert settings.blob_dir is not None
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    datasets = Path(settings.blob_dir) / "datasets"
    assert datasets.is_dir() and not any(datasets.iterdir())


def test_the_grace_period_setting_has_a_floor(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blob_gc_grace_seconds"):
        make_settings(tmp_path, blob_gc_grace_seconds=5)
    assert make_settings(tmp_path).blob_gc_grace_seconds == 3600
