"""The client half of the ``gradwatch`` command: submit, follow, diagnose, repair, plot, jobs,
preflight, datasets, model, predict, export. Talks to a server over HTTP only (``--url`` / GRADWATCH_URL, ``--api-key`` /
GRADWATCH_API_KEY).

Exit codes (stable, for scripts):
  0  done; a followed or diagnosed job is healthy
  1  the server answered with an error (problem+json printed to stderr), or it is unreachable
  2  bad command line, or the spec file cannot be read
  3  the job's verdict is exploding
  4  the job's verdict is vanishing, unstable or stalled
  5  the job failed (the service could not run it)
  6  the job was cancelled
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.errors import ApiError
from client.models import Dataset, Diagnosis, Event, Job
from client.sync import Client

__all__ = ["EXIT", "register", "run"]

EXIT = {"ok": 0, "error": 1, "usage": 2, "exploding": 3, "unhealthy": 4, "failed": 5,
        "cancelled": 6}
COMMANDS = ("submit", "follow", "diagnose", "repair", "plot", "jobs", "preflight", "datasets",
            "model", "predict", "export")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def exit_code(job: Job) -> int:
    """The exit code a finished job maps to (see the module docstring)."""
    if job.status == "failed":
        return EXIT["failed"]
    if job.status == "cancelled":
        return EXIT["cancelled"]
    return verdict_code(job.verdict)


def verdict_code(verdict: str | None) -> int:
    if verdict == "exploding":
        return EXIT["exploding"]
    if verdict in (None, "healthy"):
        return EXIT["ok"]
    return EXIT["unhealthy"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _follow(gw: Client, job: Job, *, quiet: bool = False) -> Job:
    """Progress bar from the job's events (step, loss, latest global gradient norm)."""
    total = job.progress.total_steps if job.progress else None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
               TextColumn("loss {task.fields[loss]}"),
               TextColumn("grad norm {task.fields[grad_norm]}"), TimeElapsedColumn()]
    with Progress(*columns, console=err, disable=quiet) as bar:
        task = bar.add_task(job.name or job.id[:8], total=total or 1, loss="-", grad_norm="-")
        for event in gw.follow(job.id):
            _show(bar, task, event)
    final = gw.get(job.id)
    return final


def _show(bar: Progress, task: Any, event: Event) -> None:
    data = event.data
    progress = data.get("progress") or {}
    latest = data.get("latest") or {}
    update: dict[str, Any] = {}
    if progress:
        update.update(completed=progress.get("step", 0), total=progress.get("total_steps") or 1)
    if latest:
        update.update(loss=_fmt(_float(latest.get("loss"))),
                      grad_norm=_fmt(_float(latest.get("grad_norm"))))
    if event.event == "alert":
        bar.console.print(f"[yellow]alert[/] step {data.get('step')}: {data.get('message')}")
    if update:
        bar.update(task, **update)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _print_outcome(gw: Client, job: Job) -> int:
    line = f"job {job.id} {job.status}"
    if job.verdict:
        line += f": verdict [bold]{job.verdict}[/]"
    if job.stop_reason:
        line += f" (stop reason {job.stop_reason})"
    if job.error:
        line += f" — {job.error}"
    out.print(line)
    if job.status == "succeeded":
        out.print(gw.diagnostics(job.id).summary)
    return exit_code(job)


def _cmd_submit(gw: Client, args: argparse.Namespace) -> int:
    job = gw.submit(args.spec, idempotency_key=args.idempotency_key)
    if not args.follow:
        out.print(job.id)
        return EXIT["ok"]
    err.print(f"submitted job {job.id}")
    return _print_outcome(gw, _follow(gw, job))


def _cmd_follow(gw: Client, args: argparse.Namespace) -> int:
    return _print_outcome(gw, _follow(gw, gw.get(args.job_id)))


def _cmd_repair(gw: Client, args: argparse.Namespace) -> int:
    child = gw.repair(args.job_id, recommendation=args.recommendation)
    action = (child.repair or {}).get("action") or "spec patch"
    if not args.follow:
        out.print(child.id)
        return EXIT["ok"]
    err.print(f"repair job {child.id} ({action}) of {args.job_id}")
    code = _print_outcome(gw, _follow(gw, child))
    out.print(gw.compare(child.id).summary)
    return code


def _diagnosis_tables(diag: Diagnosis) -> Iterator[Table]:
    findings = Table(title="Findings", show_lines=False)
    for column in ("severity", "kind", "step", "layers", "message"):
        findings.add_column(column, overflow="fold")
    for f in diag.findings:
        findings.add_row(f.severity, f.kind, _fmt(f.step), ",".join(map(str, f.layers)) or "-",
                         f.message)
    yield findings
    recs = Table(title="Recommendations (gradwatch repair ID --recommendation N)")
    for column in ("N", "action", "rationale", "spec patch"):
        recs.add_column(column, overflow="fold")
    for i, r in enumerate(diag.recommendations):
        recs.add_row(str(i), r.action, r.rationale, json.dumps(r.spec_patch))
    yield recs


def _cmd_diagnose(gw: Client, args: argparse.Namespace) -> int:
    diag = gw.diagnostics(args.job_id)
    if args.json:
        print(json.dumps(diag.model_dump(mode="json"), indent=2))
    else:
        state = "" if diag.final else " (provisional: the job is still running)"
        out.print(f"verdict [bold]{diag.verdict}[/]{state}; first bad step "
                  f"{_fmt(diag.first_bad_step)}")
        out.print(diag.summary)
        for table in _diagnosis_tables(diag):
            out.print(table)
    return verdict_code(diag.verdict)


def _cmd_plot(gw: Client, args: argparse.Namespace) -> int:
    data = gw.plot(args.job_id, args.kind, args.output, other=args.other)
    err.print(f"wrote {args.output} ({len(data):,} bytes)")
    return EXIT["ok"]


def _cmd_jobs(gw: Client, args: argparse.Namespace) -> int:
    page = gw.list(status=args.status, verdict=args.verdict, limit=args.limit)
    if args.json:
        print(json.dumps([j.model_dump(mode="json") for j in page.items], indent=2))
        return EXIT["ok"]
    table = Table()
    table.add_column("id", no_wrap=True)
    for column in ("name", "status", "verdict", "steps", "created (UTC)"):
        table.add_column(column, overflow="fold")
    for j in page.items:
        steps = f"{j.progress.step}/{j.progress.total_steps}" if j.progress else "-"
        created = (j.created_at or "-")[:19].replace("T", " ")
        table.add_row(j.id, j.name or "-", j.status, j.verdict or "-", steps, created)
    out.print(table)
    return EXIT["ok"]


def _cmd_preflight(gw: Client, args: argparse.Namespace) -> int:
    report = gw.preflight(args.spec).model_dump(mode="json")
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT["ok"]
    out.print(str(report.get("summary")))
    for i, rec in enumerate(report.get("recommendations") or []):
        out.print(f"  {i}. {rec.get('action')}: {rec.get('rationale')} "
                  f"{json.dumps(rec.get('spec_patch'))}")
    return EXIT["ok"]


def _dataset_row(d: dict[str, Any]) -> list[str]:
    classes = d.get("n_classes") or d.get("classes")
    return [str(d.get("id") or d.get("name")), str(d.get("source") or "-"),
            str(d.get("name") or "-"), str(d.get("task") or "-"),
            _fmt(d.get("n_samples")), _fmt(d.get("n_features")), _fmt(classes)]


def _cmd_datasets_upload(gw: Client, args: argparse.Namespace) -> int:
    ds: Dataset = gw.upload_dataset(args.file, name=args.name or os.path.basename(args.file),
                                    task=args.task, target=args.target, format=args.format)
    if args.json:
        print(json.dumps(ds.model_dump(mode="json"), indent=2))
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
        print(json.dumps(sets, indent=2))
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
        return np.load(path, allow_pickle=False)
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    try:
        return [[float(v) for v in r] for r in rows]
    except ValueError:  # a header row
        pass
    try:
        return [[float(v) for v in r] for r in rows[1:]]
    except ValueError as exc:
        raise ValueError(f"{path}: every cell after the header must be a number ({exc})"
                         ) from None


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
    import contextlib

    return contextlib.nullcontext(sys.stdout)


def _cmd_export(gw: Client, args: argparse.Namespace) -> int:
    fmt = args.format or ("parquet" if (args.output or "").endswith(".parquet") else "csv")
    if args.output is None and fmt == "csv":  # to the terminal / a pipe
        import tempfile

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


def _register_artifacts(add: Callable[..., argparse.ArgumentParser], nest: Callable[..., Any]
                        ) -> None:
    """datasets upload|list|delete, model download, predict, export."""
    datasets = nest("datasets", "upload, list and delete data sets")
    p = add("upload", _cmd_datasets_upload, "upload a CSV (header row) or an .npz (X, y)",
            sub=datasets)
    p.add_argument("file")
    p.add_argument("--name", default=None, help="display name (default: the file name)")
    p.add_argument("--task", required=True, choices=["classification", "regression"])
    p.add_argument("--target", default=None, help="CSV: the target column (default: last)")
    p.add_argument("--format", default=None, choices=["csv", "npz"],
                   help="default: from the file name")
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


def register(sub: Any) -> None:
    """Add the client sub-commands to an argparse sub-parser group."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="server (default $GRADWATCH_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=None, help="API key (default $GRADWATCH_API_KEY)")

    def add(name: str, func: Callable[[Client, argparse.Namespace], int], help: str,
            sub: Any = sub) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help)
        parser.set_defaults(func=run, client_command=func)
        return parser

    def nest(name: str, help: str) -> Any:
        group: argparse.ArgumentParser = sub.add_parser(name, help=help)
        return group.add_subparsers(dest=f"{name}_command", required=True)

    p = add("submit", _cmd_submit, "submit a spec (JSON file); --follow to watch it train")
    p.add_argument("spec", help="a TrainingSpec JSON file")
    p.add_argument("--follow", action="store_true", help="progress bar, then the verdict")
    p.add_argument("--idempotency-key", default=None)
    p = add("follow", _cmd_follow, "watch a job until it ends; exit code from its verdict")
    p.add_argument("job_id")
    p = add("diagnose", _cmd_diagnose, "the diagnosis: summary, findings, recommendations")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p = add("repair", _cmd_repair, "run a recommended fix as a new job")
    p.add_argument("job_id")
    p.add_argument("--recommendation", type=int, default=None, help="index (default 0)")
    p.add_argument("--follow", action="store_true")
    p = add("plot", _cmd_plot, "save a plot (PNG, or SVG when the file ends in .svg)")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--kind", default="gradients",
                   choices=["gradients", "heatmap", "loss", "comparison"])
    p.add_argument("--other", default=None, help="for --kind comparison: the other job")
    p = add("jobs", _cmd_jobs, "list jobs, newest first")
    p.add_argument("--status", action="append", default=None)
    p.add_argument("--verdict", action="append", default=None)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p = add("preflight", _cmd_preflight, "analyse a spec without training it")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    _register_artifacts(add, nest)


def run(args: argparse.Namespace) -> int:
    """Run a client sub-command; problem+json and connection errors become exit code 1."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    url = args.url or os.environ.get("GRADWATCH_URL") or "http://127.0.0.1:8000"
    key = args.api_key or os.environ.get("GRADWATCH_API_KEY") or None
    try:
        with Client(url, api_key=key, retries=3) as gw:
            code: int = args.client_command(gw, args)
            return code
    except ApiError as exc:
        err.print(f"[red]error[/] {exc.status} {exc.title}: {exc.detail}")
        for field in exc.errors:
            err.print(f"  {field.path}: {field.msg}")
        return EXIT["error"]
    except (FileNotFoundError, IsADirectoryError, json.JSONDecodeError, ValueError) as exc:
        err.print(f"[red]error[/] cannot read the input: {exc}")
        return EXIT["usage"]
    except (OSError, ConnectionError, httpx.HTTPError) as exc:
        err.print(f"[red]error[/] cannot reach {url}: {exc}")
        return EXIT["error"]


def main(argv: list[str] | None = None) -> int:
    """``python -m client.cli``: the client commands without the server's."""
    parser = argparse.ArgumentParser(prog="gradwatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
