"""A full-resolution history read past the response budget is paged (issue 13 item 5): the
first page carries `next_cursor` and an RFC 8288 `Link: <...>; rel="next"`; following them
returns every point exactly once, in step order, NaN/±Inf/-0.0 and missing values intact —
as JSON and as an Apache Arrow IPC stream alike. Cursors are validated: a forged, truncated
or borrowed one is a 422 problem+json. On SQLite and PostgreSQL."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from reliability_backends import database_url as database_url  # the fixture
from test_history_budget import job_with_history, settings_for

from app.history_formats import ARROW_STREAM
from core.telemetry import EpochRecord, LayerRecord, StepRecord

N = 500
LAYER_FIELDS = ("grad_norm", "weight_grad_norm", "weight_norm", "update_norm", "act_mean",
                "act_std", "dead_fraction", "saturated_fraction")
SPECIAL = {7: math.inf, 8: -0.0, 9: math.nan, 10: -math.inf, 11: 5e-324, 12: 1.7976931348623157e308}


def value(step: int, layer: int) -> float:
    return SPECIAL.get(step, (step + 1) * 1.1 + layer / 3)


def record(step: int) -> StepRecord:
    return StepRecord(
        step=step, epoch=step // 100, loss=value(step, 9), grad_norm=value(step, 7),
        clipped_grad_norm=value(step, 8), lr=0.01, clipped=False,
        layers=[LayerRecord(layer=i, grad_norm=value(step, i), weight_grad_norm=1.0,
                            weight_norm=2.0, update_norm=0.1,
                            act_std=value(step, i) if step % 3 else None)  # act_mean: missing
                for i in range(3)])


RECORDS = [record(s) for s in range(N)]
# every other step recorded, as with record_every: pages cut between recorded steps
STEPS = list(range(0, 2 * N, 2))


def expected(path: str) -> dict[str, list[Any]]:
    """Each series as the stored records hold it: values, None for missing."""
    out: dict[str, list[Any]] = {}
    for r, step in zip(RECORDS, STEPS, strict=True):
        del step
        if path == "metrics":
            for m in ("loss", "grad_norm", "clipped_grad_norm", "lr"):
                out.setdefault(m, []).append(getattr(r, m))
        else:
            for ly in r.layers:
                for m in LAYER_FIELDS:
                    out.setdefault(f"layers.{ly.layer}.{m}", []).append(getattr(ly, m))
    return out


def json_value(v: Any) -> Any:
    if v in ("NaN", "Infinity", "-Infinity"):
        return float(v.replace("Infinity", "inf"))
    return v


def same(a: list[Any], b: list[Any]) -> bool:
    """Bitwise equal floats (NaN == NaN, -0.0 != 0.0), None == None."""
    def bits(v: Any) -> Any:
        return None if v is None else struct.pack("<d", v)
    return [bits(v) for v in a] == [bits(v) for v in b]


def pages(client: TestClient, url: str, params: dict[str, Any], headers: dict[str, str]
          ) -> Iterator[Any]:
    """Each page of a paged read, following the Link header."""
    r = client.get(url, params=params, headers=headers)
    while True:
        assert r.status_code == 200, r.text
        yield r
        link = r.headers.get("link")
        if link is None:
            return
        target = re.fullmatch(r'<([^>]+)>; rel="next"', link)
        assert target, link
        r = client.get(target.group(1), headers=headers)


@pytest.fixture
def paged(make_client: Callable[..., TestClient], database_url: str | None
          ) -> tuple[TestClient, str]:
    client = make_client(**settings_for(database_url, max_history_values=1000))
    records = [StepRecord(**{**{f: getattr(r, f) for f in r.__slots__}, "step": s})
               for r, s in zip(RECORDS, STEPS, strict=True)]
    epochs = [EpochRecord(epoch=e, step=STEPS[100 * e + 99], train_loss=1.0 / (e + 1))
              for e in range(5)]
    return client, job_with_history(client, records, epochs)


@pytest.mark.parametrize("path", ["gradients", "metrics"])
def test_following_the_links_returns_every_point_once_in_order(
        paged: tuple[TestClient, str], path: str) -> None:
    client, job_id = paged
    got: dict[str, list[Any]] = {}
    steps: list[int] = []
    n_pages = 0
    for r in pages(client, f"/v1/jobs/{job_id}/{path}", {"max_points": 10_000}, {}):
        body = r.json()
        n_pages += 1
        assert body["downsampled"] is False
        assert (body["next_cursor"] is None) == ("link" not in r.headers)
        if body["next_cursor"]:
            assert f"cursor={body['next_cursor']}" in r.headers["link"]
        series = ({m: s for m, s in body["series"].items()} if path == "metrics" else
                  {f"layers.{ly['layer']}.{m}": s for ly in body["layers"]
                   for m, s in ly["series"].items()})
        assert sum(len(s["values"]) for s in series.values()) <= 1000  # the budget
        first = next(iter(series.values()))["steps"]
        assert all(s["steps"] == first for s in series.values())
        steps += first
        for name, s in series.items():
            got.setdefault(name, []).extend(json_value(v) for v in s["values"])
        if path == "metrics":
            assert len(body["epochs"]["epoch"]) == (5 if n_pages == 1 else 0)
    assert n_pages == -(-N // (1000 // len(got)))
    assert steps == STEPS  # every recorded step once, in order
    want = expected(path)
    assert got.keys() == want.keys()
    for name in want:
        assert same(got[name], want[name]), name


@pytest.mark.parametrize("path", ["gradients", "metrics"])
def test_the_arrow_stream_is_bit_exact_and_paged_alike(
        paged: tuple[TestClient, str], path: str) -> None:
    client, job_id = paged
    url = f"/v1/jobs/{job_id}/{path}"
    tables = []
    for r in pages(client, url, {"max_points": 10_000}, {"Accept": ARROW_STREAM}):
        assert r.headers["content-type"] == ARROW_STREAM
        tables.append(pa.ipc.open_stream(r.content).read_all())
    json_pages = list(pages(client, url, {"max_points": 10_000}, {}))
    assert len(tables) == len(json_pages) > 1
    table = pa.concat_tables(tables)
    assert table.column("step").to_pylist() == STEPS
    want = expected(path)
    assert table.column_names == ["step", *want]
    for name in want:
        assert same(table.column(name).to_pylist(), want[name]), name
    meta = tables[0].schema.metadata[b"gradwatch"]
    assert b'"next_cursor":"' in meta and b'"downsampled":false' in meta
    # the Arrow page boundaries are the JSON ones
    assert [t.column("step")[0].as_py() for t in tables] == [p.json()["start_step"]
                                                             for p in json_pages]
    # ?format=arrow is the same as the Accept header; a NumPy view is bit-exact too
    r = client.get(url, params={"max_points": 10_000, "format": "arrow"})
    column = pa.ipc.open_stream(r.content).read_all().column(1).to_numpy(zero_copy_only=False)
    assert column[8] == 0.0 and np.signbit(column[8])  # record 8 holds -0.0
    assert np.isposinf(column[7]) and np.isnan(column[9]) and np.isneginf(column[10])


@pytest.mark.parametrize(("accept", "arrow"), [
    (ARROW_STREAM, True), ("application/json", False), ("*/*", False), ("", False),
    (f"application/json;q=0.5, {ARROW_STREAM}", True),
    (f"{ARROW_STREAM};q=0.4, application/json", False),
    (f"{ARROW_STREAM};q=0.9, */*;q=0.1", True)])
def test_the_accept_header_chooses_arrow_or_json(paged: tuple[TestClient, str], accept: str,
                                                  arrow: bool) -> None:
    client, job_id = paged
    r = client.get(f"/v1/jobs/{job_id}/metrics", params={"end_step": 99},
                   headers={"Accept": accept} if accept else {})
    assert r.status_code == 200 and r.headers["vary"] == "Accept"
    assert r.headers["content-type"] == (ARROW_STREAM if arrow else "application/json")


def test_a_downsampled_read_is_one_arrow_response_with_nulls_where_a_series_has_no_point(
        paged: tuple[TestClient, str]) -> None:
    client, job_id = paged
    r = client.get(f"/v1/jobs/{job_id}/gradients", params={"layer": 0, "max_points": 20,
                                                           "format": "arrow"})
    assert r.status_code == 200 and "link" not in r.headers
    table = pa.ipc.open_stream(r.content).read_all()
    body = client.get(f"/v1/jobs/{job_id}/gradients",
                      params={"layer": 0, "max_points": 20}).json()
    assert body["downsampled"] is True
    for metric, series in body["layers"][0]["series"].items():
        column = dict(zip(table.column("step").to_pylist(),
                          table.column(f"layers.0.{metric}").to_pylist(), strict=True))
        assert same([column[s] for s in series["steps"]],
                    [json_value(v) for v in series["values"]])
        assert sum(v is not None for v in column.values()) == len(series["steps"])


def test_bad_cursors_are_422_problems(paged: tuple[TestClient, str]) -> None:
    client, job_id = paged
    url = f"/v1/jobs/{job_id}/metrics"
    good = client.get(url, params={"max_points": 10_000}).json()["next_cursor"]
    assert good
    forged = good[:-2] + ("AA" if good[-2:] != "AA" else "BA")
    cases = [
        {"max_points": 10_000, "cursor": "not-a-cursor"},
        {"max_points": 10_000, "cursor": good[:-1]},  # truncated
        {"max_points": 10_000, "cursor": forged},  # another query's digest
        {"max_points": 10_000, "cursor": good + "A" * 80},  # too long: refused unread
        {"max_points": 10_000, "cursor": "\u00e9" * len(good)},
        {"max_points": 5_000, "cursor": good},  # the cursor of another query
        {"max_points": 10_000, "metrics": "loss", "cursor": good},
    ]
    for params in cases:
        r = client.get(url, params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "cursor" in r.text
    other = client.get(f"/v1/jobs/{job_id}/gradients",
                       params={"max_points": 10_000, "cursor": good})
    assert other.status_code == 422  # a metrics cursor is not a gradients cursor
    assert client.get(url, params={"max_points": 10_000, "cursor": good}).status_code == 200
