"""The blob store: staged writes become visible atomically, failures leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.blobstore import LocalBlobStore, blob_store, check_key
from app.settings import Settings


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_open_size_delete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with store.staging() as staged:
        staged.write_bytes(b"abc")
        assert store.put("datasets/d1.npz", staged) == 3
    assert _files(tmp_path) == ["datasets/d1.npz"]  # the staging file was moved, not copied
    with store.open("datasets/d1.npz") as f:
        assert f.read() == b"abc"
    assert store.size("datasets/d1.npz") == 3
    assert store.delete("datasets/d1.npz") is True
    assert store.delete("datasets/d1.npz") is False
    assert store.size("datasets/d1.npz") is None
    with pytest.raises(FileNotFoundError):
        store.open("datasets/d1.npz")


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(RuntimeError), store.staging() as staged:
        staged.write_bytes(b"half")
        raise RuntimeError("upload aborted")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "A.npz", "", "a//b",
                                 "a/b/c/d/e", ".hidden", "x" * 200, "a\x00b"])
def test_keys_that_could_escape_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        LocalBlobStore(tmp_path).size(key)


@given(st.text(max_size=40))
def test_every_accepted_key_stays_under_the_root(key: str) -> None:
    root = Path("/srv/blobs")
    try:
        check_key(key)
    except ValueError:
        return
    assert (root / key).resolve().is_relative_to(root)


def test_default_location_is_under_the_data_dir(tmp_path: Path) -> None:
    store = blob_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalBlobStore)
    assert store.root == (tmp_path / "blobs").resolve()
