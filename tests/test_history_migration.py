"""Migration 0003: row-format histories become columnar chunks, and back, with every history
endpoint answering exactly as before; migration 0021: GWH2 chunks become GWH1 and back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db import build_engine, build_sessionmaker, unit_of_work
from app.history_store import decode_chunk
from app.lifecycle import move_job
from app.main import create_app
from app.migrate import downgrade, upgrade
from app.services import submit_job, validate_spec
from app.settings import Settings
from app.sink import DatabaseSink
from core.telemetry import LayerRecord, StepRecord
from tests.conftest import make_settings

NAN, INF = math.nan, math.inf
N_LAYERS = 3  # two hidden layers and the output


def records(n: int, seed: int, stride: int = 1) -> list[StepRecord]:
    """A training curve with planted spikes, NaN and +-Inf, and statistics that do not apply."""
    rng = np.random.default_rng(seed)
    grads = np.exp(np.cumsum(rng.normal(0, 0.02, size=(n, N_LAYERS)), axis=0))
    grads[rng.choice(n, 6, replace=False)] *= 1e6  # spikes
    bad = rng.choice(n, (10, 2), replace=False)
    grads[bad[:5, 0], 0] = NAN
    grads[bad[5:, 0], 1] = INF
    grads[bad[:, 1][:3], 2] = -INF
    out = []
    for i in range(n):
        g = grads[i].tolist()
        total = float(np.sqrt(np.nansum(grads[i] ** 2)))
        out.append(StepRecord(
            step=i * stride, epoch=i // 500, loss=1.0 / (1 + i) + g[0] * 1e-3, grad_norm=total,
            clipped_grad_norm=min(total, 5.0), lr=0.01, clipped=total > 5.0, layers=[
                LayerRecord(layer=k, grad_norm=g[k], weight_grad_norm=g[k] * 0.9,
                            weight_norm=3.0 + i * 1e-5, update_norm=1e-3 * g[k],
                            act_mean=0.1 * k, act_std=1.0,
                            dead_fraction=0.25 if k < 2 else None,
                            saturated_fraction=None)
                for k in range(N_LAYERS)]))
    return out


def seed(settings: Settings) -> dict[str, str]:
    """Three jobs: a long finished one, a finished one thinned by record_every, a running one."""
    engine = build_engine(settings.url)
    factory = build_sessionmaker(engine)
    jobs: dict[str, str] = {}
    for name, n, stride, finished, seed_ in [("long", 40_000, 1, True, 1),
                                             ("thinned", 3_000, 7, True, 2),
                                             ("running", 9_000, 1, False, 3)]:
        spec = validate_spec({"data": {"source": "synthetic", "name": "spirals"},
                              "model": {"hidden": [{"units": 4}, {"units": 4}]},
                              "training": {"max_steps": n * stride, "epochs": 100_000}}, settings)
        with unit_of_work(factory) as session:
            job_id = submit_job(session, spec=spec, settings=settings).job.id
            move_job(session, job_id, "running")
        sink = DatabaseSink(job_id, factory, total_steps=n * stride, flush_every=700,
                            flush_interval=3600, progress_interval=3600)
        recs = records(n, seed_, stride)
        for i in range(0, n, 350):
            sink.write_steps(recs[i:i + 350])
        if finished:
            sink.close()
            with unit_of_work(factory) as session:
                move_job(session, job_id, "succeeded", stop_reason="completed")
        else:
            sink.flush()
        jobs[name] = job_id
    engine.dispose()
    return jobs


QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("gradients", {}),
    ("gradients", {"max_points": 100}),
    ("gradients", {"max_points": 5000}),
    ("gradients", {"layer": 1, "max_points": 10_000}),
    ("gradients", {"metrics": "grad_norm,act_std,saturated_fraction", "max_points": 64}),
    ("gradients", {"start_step": 1234, "end_step": 31_234, "max_points": 300}),
    ("gradients", {"start_step": 100, "end_step": 180}),
    ("gradients", {"start_step": 10**6}),
    ("metrics", {}),
    ("metrics", {"max_points": 50}),
    ("metrics", {"start_step": 5, "end_step": 39_000, "metrics": "loss,lr"}),
    ("diagnostics", {}),
]


def answers(settings: Settings, jobs: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with TestClient(create_app(settings)) as client:
        for name, job_id in jobs.items():
            for path, params in QUERIES:
                response = client.get(f"/v1/jobs/{job_id}/{path}", params=params)
                assert response.status_code == 200, response.text
                out[f"{name} {path} {params}"] = response.text
        response = client.get(f"/v1/jobs/{jobs['long']}/comparison",
                              params={"other": jobs["thinned"]})
        assert response.status_code == 200, response.text
        out["comparison"] = response.text
    return out


def test_row_histories_convert_both_ways_and_every_history_endpoint_answers_the_same(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, migrate_on_start=False)
    upgrade(settings.url)
    jobs = seed(settings)
    columnar = answers(settings, jobs)
    assert '"NaN"' in columnar[f"long gradients {dict()}"]  # the planted values show

    downgrade(settings.url, "0002")  # back to one row per step and per layer-step
    engine = build_engine(settings.url, pool=False)
    with engine.connect() as conn:
        counts = conn.execute(text(
            "SELECT (SELECT count(*) FROM step_metrics), (SELECT count(*) FROM layer_stats), "
            "(SELECT count(*) FROM series_rollups WHERE level = 4)")).one()
        nan_text = conn.execute(text(
            "SELECT count(*) FROM layer_stats WHERE typeof(grad_norm) = 'text'")).scalar()
        nulls = conn.execute(text(
            "SELECT count(*) FROM layer_stats WHERE saturated_fraction IS NULL")).scalar()
    engine.dispose()
    n_steps = 40_000 + 3_000 + 9_000
    assert tuple(counts[:2]) == (n_steps, n_steps * N_LAYERS)
    assert counts[2] > 0  # the old format's per-layer rollups are rebuilt
    assert nan_text == 15  # each job's 5 NaN, stored as SQLite's 'NaN' text
    assert nulls == n_steps * N_LAYERS  # "does not apply" stays NULL

    upgrade(settings.url)  # and forward again: the row-format histories are converted
    assert answers(settings, jobs) == columnar


def chunk_bytes(settings: Settings) -> dict[tuple[int, int], bytes]:
    engine = build_engine(settings.url, pool=False)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job_key, first_step, data FROM history_chunks")).all()
    engine.dispose()
    return {(k, f): bytes(d) for k, f, d in rows}


def test_chunks_change_layout_both_ways_and_every_history_endpoint_answers_the_same(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, migrate_on_start=False)
    upgrade(settings.url)
    jobs = seed(settings)
    framed = chunk_bytes(settings)
    assert framed and all(d[:4] == b"GWH2" for d in framed.values())
    before = answers(settings, jobs)

    downgrade(settings.url, "0020_store")  # what the code before GWH2 reads
    single = chunk_bytes(settings)
    assert single.keys() == framed.keys()
    assert all(d[:4] == b"GWH1" for d in single.values())
    for key, data in framed.items():  # the same figures, bit for bit
        a, b = decode_chunk(data), decode_chunk(single[key])
        for field in ("steps", "epochs", "clipped", "values", "present"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), field

    upgrade(settings.url)
    assert chunk_bytes(settings) == framed  # the same bytes as written by the sink
    assert answers(settings, jobs) == before
