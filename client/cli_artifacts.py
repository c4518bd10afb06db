"""``gradwatch datasets upload|list|delete``, ``model download``, ``predict`` and ``export``:
the client commands for data sets, trained models and history exports (see
:mod:`client.cli` for the exit codes)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from rich.table import Table

from client.cli import EXIT, err, error_text, fmt_value, out, print_json
from client.models import Dataset
from client.sync import Client

__all__ = ["register_artifacts"]

UPLOAD_FORMATS = ("csv", "npz")


def _dataset_row(d: dict[str, Any]) -> list[str]:
    classes = d.get("n_classes") or d.get("classes")
    return [str(d.get("id") or d.get("name")), str(d.get("source") or "-"),
            str(d.get("name") or "-"), str(d.get("task") or "-"),
            fmt_value(d.get("n_samples")), fmt_value(d.get("n_features")), fmt_value(classes)]


def _cmd_datasets_upload(gw: Client, args: argparse.Namespace) -> int:
    suffix = os.path.splitext(args.file)[1].lower().lstrip(".")
    if args.format is None and suffix not in UPLOAD_FORMATS:
        # said here: the client's own error names its Python argument (format='csv')
        err.print(error_text(f"cannot tell the format of {args.file} from its name: give "
                             f"--format {' or --format '.join(UPLOAD_FORMATS)}"))
        return EXIT["usage"]
    ds: Dataset = gw.upload_dataset(args.file, name=args.name or os.path.basename(args.file),
                                    task=args.task, target=args.target, format=args.format)
    if args.json:
        print_json(ds.model_dump(mode="json"))
        return EXIT["ok"]
    err.print(f"uploaded {ds.name}: {ds.n_samples} rows, {ds.n_features} features "
              f"({ds.task}); use it in a spec as \"data\": {json.dumps(ds.spec_data)}")
    out.print(ds.id)
    return EXIT["ok"]


def _cmd_datasets_list(gw: Client, args: argparse.Namespace) -> int:
    sets: list[dict[str, Any]] = gw.datasets()["datasets"]
    if args.uploaded:
        sets = [d for d in sets if d.get("source") == "uploaded"]
    if args.json:
        print_json(sets)
        return EXIT["ok"]
    table = Table()
    table.add_column("id / name", no_wrap=True)
    for column in ("source", "name", "task", "rows", "features", "classes"):
        table.add_column(column, overflow="fold")
    for d in sets:
        table.add_row(*_dataset_row(d))
    out.print(table)
    return EXIT["ok"]


def _cmd_datasets_delete(gw: Client, args: argparse.Namespace) -> int:
    gw.delete_dataset(args.dataset_id)
    err.print(f"deleted data set {args.dataset_id}")
    return EXIT["ok"]


def _cmd_model_download(gw: Client, args: argparse.Namespace) -> int:
    which = "best" if args.best else "final"
    path = gw.download_model(args.job_id, args.output or f"{args.job_id}-{which}.npz",
                             which=which, allow_non_finite=args.allow_non_finite)
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes; core.load_model reads it)")
    return EXIT["ok"]


def _read_inputs(path: str) -> Any:
    """Rows of X from a .npy (2-D) or a CSV of numbers (a header row is skipped)."""
    import numpy as np

    if path.lower().endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, EOFError):  # not .npy, or Python objects (NumPy then suggests
            # unpickling the file, which this command will not do)
            raise ValueError(f"{path} is not a .npy array of numbers (what np.save writes for "
                             "a numeric array)") from None
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    try:
        values = [[float(v) for v in r] for r in rows]
    except ValueError:  # a header row
        try:
            values = [[float(v) for v in r] for r in rows[1:]]
        except ValueError as exc:
            raise ValueError(f"{path}: every cell after the header must be a number ({exc})"
                             ) from None
    if not values:
        raise ValueError(f"{path}: no rows of numbers to predict")
    widths = sorted({len(r) for r in values})
    if len(widths) > 1:
        raise ValueError(f"{path}: every row must have the same number of columns "
                         f"(found {', '.join(map(str, widths))})")
    return values


def _cmd_predict(gw: Client, args: argparse.Namespace) -> int:
    X = _read_inputs(args.input)
    prediction = gw.predict(args.job_id, X, which="best" if args.best else "final",
                            allow_non_finite=args.allow_non_finite)
    probs = prediction.probabilities
    first = prediction.predictions[0] if prediction.predictions else 0
    header = ([f"output_{i}" for i in range(len(first))] if isinstance(first, list)
              else ["prediction"])
    header += [f"p_{i}" for i in range(len(probs[0]))] if probs else []
    with (open(args.output, "w", newline="") if args.output else _stdout()) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for i, p in enumerate(prediction.predictions):
            row = [repr(v) for v in p] if isinstance(p, list) else [str(p)]
            writer.writerow(row + ([repr(v) for v in probs[i]] if probs else []))
    if args.output:
        err.print(f"wrote {len(prediction.predictions)} predictions to {args.output}")
    return EXIT["ok"]


def _stdout() -> Any:
    return contextlib.nullcontext(sys.stdout)


def _cmd_export(gw: Client, args: argparse.Namespace) -> int:
    fmt = args.format or ("parquet" if (args.output or "").endswith(".parquet") else "csv")
    if args.output is None and fmt == "csv":  # to the terminal / a pipe
        with tempfile.TemporaryDirectory() as tmp:
            path = gw.export_csv(args.job_id, args.kind, os.path.join(tmp, "export.csv"))
            with open(path, "rb") as f:
                while chunk := f.read(1 << 16):
                    sys.stdout.buffer.write(chunk)
        return EXIT["ok"]
    target = args.output or f"{args.job_id}-{args.kind}.{fmt}"
    export = gw.export_parquet if fmt == "parquet" else gw.export_csv
    path = export(args.job_id, args.kind, target)
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return EXIT["ok"]


def register_artifacts(add: Callable[..., argparse.ArgumentParser], nest: Callable[..., Any]
                        ) -> None:
    """datasets upload|list|delete, model download, predict, export."""
    datasets = nest("datasets", "upload, list and delete data sets")
    p = add("upload", _cmd_datasets_upload, "upload a CSV (header row) or an .npz (X, y)",
            sub=datasets)
    p.add_argument("file")
    p.add_argument("--name", default=None, help="display name (default: the file name)")
    p.add_argument("--task", required=True, choices=["classification", "regression"])
    p.add_argument("--target", default=None, help="CSV: the target column (default: last)")
    p.add_argument("--format", default=None, choices=UPLOAD_FORMATS,
                   help="default: from the file name (.csv, .npz)")
    p.add_argument("--json", action="store_true", help="the data set as JSON")
    p = add("list", _cmd_datasets_list, "built-in, synthetic and uploaded data sets",
            sub=datasets)
    p.add_argument("--uploaded", action="store_true", help="only uploaded data sets")
    p.add_argument("--json", action="store_true")
    p = add("delete", _cmd_datasets_delete, "delete an uploaded data set", sub=datasets)
    p.add_argument("dataset_id")
    model = nest("model", "a job's trained model")
    p = add("download", _cmd_model_download, "download the model (.npz)", sub=model)
    p.add_argument("job_id")
    p.add_argument("-o", "--output", default=None, help="default: JOB_ID-final.npz")
    p.add_argument("--best", action="store_true", help="the lowest-validation-loss model")
    p.add_argument("--allow-non-finite", action="store_true",
                   help="download an exploded run's NaN/Inf weights too")
    p = add("predict", _cmd_predict, "predict rows of a .csv or .npy with a job's model")
    p.add_argument("job_id")
    p.add_argument("--input", "-i", required=True, help="FILE.csv (numbers) or FILE.npy (2-D)")
    p.add_argument("-o", "--output", default=None, help="write CSV here (default: stdout)")
    p.add_argument("--best", action="store_true")
    p.add_argument("--allow-non-finite", action="store_true")
    p = add("export", _cmd_export, "every recorded point of a history as CSV or Parquet")
    p.add_argument("job_id")
    p.add_argument("kind", choices=["gradients", "metrics"])
    p.add_argument("-o", "--output", default=None,
                   help="file (Parquet when it ends in .parquet; default: CSV to stdout)")
    p.add_argument("--format", default=None, choices=["csv", "parquet"])
