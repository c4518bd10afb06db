"""The client half of the ``gradwatch`` command: submit, follow, cancel, delete, diagnose,
repair, plot, jobs, preflight, datasets, model, predict, export, sweep. Talks to a server over HTTP only (``--url`` / GRADWATCH_URL, ``--api-key`` /
GRADWATCH_API_KEY).

Exit codes (stable, for scripts):
  0  done; a followed or diagnosed job is healthy
  1  the server answered with an error (problem+json printed to stderr), or it is unreachable
  2  bad command line, or the spec file cannot be read
  3  the job's verdict is exploding
  4  the job's verdict is vanishing, unstable or stalled
  5  the job failed (the service could not run it)
  6  the job was cancelled
  130  interrupted (Ctrl-C); a followed job or sweep carries on on the server
  141  the reader of the output stopped early (``| head``): the output was cut short
(A waited sweep: 0 once every member ran, whatever the verdicts; 5 failed; 6 cancelled.)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from client.errors import ApiError
from client.models import Diagnosis, Event, Job
from client.sync import Client

__all__ = ["EXIT", "IMAGE_FORMATS", "error_text", "exit_code", "field_lines", "fmt_value",
           "follow_job", "image_file", "patch_json", "print_json", "print_outcome", "register",
           "run", "stopped_following"]

EXIT = {"ok": 0, "error": 1, "usage": 2, "exploding": 3, "unhealthy": 4, "failed": 5,
        "cancelled": 6, "interrupted": 130, "output_closed": 141}
#: what the server draws: the format follows the output file's extension
IMAGE_FORMATS = ("png", "svg")
COMMANDS = ("submit", "follow", "cancel", "delete", "diagnose", "repair", "plot", "jobs",
            "preflight", "datasets", "model", "predict", "export", "sweep")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (``| head -1``): stop printing; :func:`run` ends the command
        (rich's own answer is a silent exit 1, the code of a server error)."""
        self.quiet = True
        raise BrokenPipeError


# markup and emoji codes off: names, summaries and error details are printed as they are
# ("[/]" in a job's name would be rich markup, and a MarkupError; ":fire:" an emoji); styles
# are given as Text spans instead
out = _Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = _Console(stderr=True, highlight=False, markup=False, emoji=False)


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


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_json(value: Any) -> None:
    """``value`` as JSON on stdout, NaN and ±Inf written as the API writes them (``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``): the bare tokens are not JSON, and strict parsers
    (JavaScript, Go, serde) refuse the whole document."""
    print(json.dumps(_api_floats(value), indent=2, allow_nan=False))


def _api_floats(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: _api_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_api_floats(v) for v in value]
    return value


def error_text(message: str) -> Text:
    """``error`` in red, then ``message`` as it is."""
    return Text.assemble(("error", "red"), " ", message)


def follow_job(gw: Client, job: Job, *, quiet: bool = False) -> Job:
    """Progress bar from the job's events (step, loss, latest global gradient norm)."""
    total = job.progress.total_steps if job.progress else None
    columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
               TaskProgressColumn(), TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
               TextColumn("loss {task.fields[loss]}"),
               TextColumn("grad norm {task.fields[grad_norm]}"), TimeElapsedColumn()]
    with stopped_following(f"job {job.id}", f"gradwatch follow {job.id}",
                           f"gradwatch cancel {job.id}"), \
            Progress(*columns, console=err, disable=quiet) as bar:
        task = bar.add_task(job.name or job.id[:8], total=total or 1, loss="-", grad_norm="-")
        for event in gw.follow(job.id):
            _show(bar, task, event)
    final = gw.get(job.id)
    return final


@contextmanager
def stopped_following(what: str, again: str, stop: str) -> Iterator[None]:
    """Ctrl-C while following stops the watching, not the work: say so, how to watch again
    and how to stop it (the interrupt then ends the command, :func:`run`)."""
    try:
        yield
    except KeyboardInterrupt:
        err.print(f"stopped following {what}; the server carries on with it ({again} to "
                  f"watch it again, {stop} to stop it)", soft_wrap=True)  # commands unbroken
        raise


def _show(bar: Progress, task: Any, event: Event) -> None:
    data = event.data
    progress = data.get("progress") or {}
    latest = data.get("latest") or {}
    update: dict[str, Any] = {}
    if progress:
        update.update(completed=progress.get("step", 0), total=progress.get("total_steps") or 1)
    if latest:
        update.update(loss=fmt_value(_float(latest.get("loss"))),
                      grad_norm=fmt_value(_float(latest.get("grad_norm"))))
    if event.event == "alert":
        attempt = data.get("attempt")  # a re-queued job runs again: say which run
        run = f" (run {attempt})" if isinstance(attempt, int) and attempt > 1 else ""
        bar.console.print(Text.assemble(("alert", "yellow"),
                                        f" step {data.get('step')}{run}: {data.get('message')}"))
    if update:
        bar.update(task, **update)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def print_outcome(gw: Client, job: Job) -> int:
    line = Text(f"job {job.id} {job.status}")
    if job.verdict:
        line.append(": verdict ").append(job.verdict, style="bold")
    if job.stop_reason:
        line.append(f" (stop reason {job.stop_reason})")
    if job.error:
        line.append(f" — {job.error}")
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
    return print_outcome(gw, follow_job(gw, job))


def _cmd_follow(gw: Client, args: argparse.Namespace) -> int:
    return print_outcome(gw, follow_job(gw, gw.get(args.job_id)))


def _cmd_cancel(gw: Client, args: argparse.Namespace) -> int:
    job = gw.cancel(args.job_id)
    err.print(f"cancelled job {job.id}" if job.terminal else
              f"cancelling job {job.id}: it stops within one flush")
    return EXIT["ok"]


def _cmd_delete(gw: Client, args: argparse.Namespace) -> int:
    gw.delete(args.job_id)
    err.print(f"deleted job {args.job_id} and its history")
    return EXIT["ok"]


def _cmd_repair(gw: Client, args: argparse.Namespace) -> int:
    child = gw.repair(args.job_id, recommendation=args.recommendation, spec_patch=args.patch)
    action = (child.repair or {}).get("action") or "spec patch"
    if not args.follow:
        out.print(child.id)
        return EXIT["ok"]
    err.print(f"repair job {child.id} ({action}) of {args.job_id}")
    code = print_outcome(gw, follow_job(gw, child))
    out.print(gw.compare(child.id).summary)
    return code


def _diagnosis_tables(diag: Diagnosis) -> Iterator[Table]:
    findings = Table(title="Findings", show_lines=False)
    for column in ("severity", "kind", "step", "layers", "message"):
        findings.add_column(column, overflow="fold")
    for f in diag.findings:
        findings.add_row(f.severity, f.kind, fmt_value(f.step), ",".join(map(str, f.layers)) or "-",
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
        print_json(diag.model_dump(mode="json"))
    else:
        state = "" if diag.final else " (provisional: the job is still running)"
        out.print(Text.assemble("verdict ", (diag.verdict, "bold"),
                                f"{state}; first bad step {fmt_value(diag.first_bad_step)}"))
        out.print(diag.summary)
        for table in _diagnosis_tables(diag):
            out.print(table)
    return verdict_code(diag.verdict)


def _cmd_plot(gw: Client, args: argparse.Namespace) -> int:
    data = gw.plot(args.job_id, args.kind, args.output, other=args.other)
    err.print(f"wrote {args.output} ({len(data):,} bytes)")
    return EXIT["ok"]


def _cmd_jobs(gw: Client, args: argparse.Namespace) -> int:
    page = gw.list(status=args.status, verdict=args.verdict, limit=args.limit,
                   sweep_members=False if args.without_sweep_members else None)
    if args.json:
        print_json([j.model_dump(mode="json") for j in page.items])
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
        print_json(report)
        return EXIT["ok"]
    out.print(str(report.get("summary")))
    for i, rec in enumerate(report.get("recommendations") or []):
        out.print(f"  {i}. {rec.get('action')}: {rec.get('rationale')} "
                  f"{json.dumps(rec.get('spec_patch'))}")
    return EXIT["ok"]


def patch_json(text: str) -> dict[str, Any]:
    """``--patch``: a JSON object (RFC 7396 merge patch), inline or ``@FILE``."""
    source = text
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                source = f.read()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc.strerror}") from None
    try:
        patch = json.loads(source)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {exc}") from None
    if not isinstance(patch, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: a merge patch is a JSON object")
    return patch


def image_file(text: str) -> str:
    """An image to write (``-o``, ``--map``): its name must end in .png or .svg, the formats
    the server draws (``g.jpg`` got PNG bytes under a name that says JPEG)."""
    if os.path.splitext(text)[1].lower().lstrip(".") not in IMAGE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the server draws PNG or SVG only; name the file .png or .svg")
    return text


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
    p = add("cancel", _cmd_cancel, "stop a queued or running job")
    p.add_argument("job_id")
    p = add("delete", _cmd_delete, "delete a finished job and its history")
    p.add_argument("job_id")
    p = add("diagnose", _cmd_diagnose, "the diagnosis: summary, findings, recommendations")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p = add("repair", _cmd_repair, "run a recommended fix, or a merge patch of your own, as a "
                                   "new job")
    p.add_argument("job_id")
    fix = p.add_mutually_exclusive_group()
    fix.add_argument("--recommendation", type=int, default=None, help="index (default 0)")
    fix.add_argument("--patch", type=patch_json, default=None, metavar="JSON|@FILE",
                     help='your own fix, a merge patch for the job\'s spec, e.g. '
                          '\'{"optimizer": {"lr": 0.001}}\' or @patch.json')
    p.add_argument("--follow", action="store_true")
    p = add("plot", _cmd_plot, "save a plot as PNG or SVG (from the file's extension)")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", required=True, type=image_file, metavar="FILE",
                   help="FILE.png or FILE.svg")
    p.add_argument("--kind", default="gradients",
                   choices=["gradients", "heatmap", "loss", "comparison"])
    p.add_argument("--other", default=None, help="for --kind comparison: the other job")
    p = add("jobs", _cmd_jobs, "list jobs, newest first")
    p.add_argument("--status", action="append", default=None)
    p.add_argument("--verdict", action="append", default=None)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--without-sweep-members", action="store_true",
                   help="leave out the members of sweeps (gradwatch sweep get lists them)")
    p.add_argument("--json", action="store_true")
    p = add("preflight", _cmd_preflight, "analyse a spec without training it")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    from client.cli_artifacts import register_artifacts  # they import this module
    from client.cli_sweeps import register_sweeps

    register_artifacts(add, nest)
    register_sweeps(add, nest)


def field_lines(exc: ApiError) -> list[str]:
    """A 422's field errors as ``path: message`` lines, less those its detail already says
    (the detail is often the first error, "body.training.epochs: ...", or its message:
    printed again under itself it read as two errors)."""
    return [f"{field.path}: {field.msg}" for field in exc.errors
            if exc.detail not in (field.msg, f"{field.path}: {field.msg}")
            and not exc.detail.startswith(f"{field.path}: {field.msg} (and ")]


def run(args: argparse.Namespace) -> int:
    """Run a client sub-command; problem+json and connection errors become exit code 1."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    url = args.url or os.environ.get("GRADWATCH_URL") or "http://127.0.0.1:8000"
    key = args.api_key or os.environ.get("GRADWATCH_API_KEY") or None
    try:
        gw = Client(url, api_key=key, retries=3)
    except ValueError as exc:  # a key no header can carry
        err.print(error_text(f"--api-key / GRADWATCH_API_KEY: {exc}"))
        return EXIT["usage"]
    try:
        with gw:
            code: int = args.client_command(gw, args)
            sys.stdout.flush()  # here, not at exit, where a closed pipe is "Exception ignored"
            return code
    except BrokenPipeError:  # the reader of stdout went away: the rest goes nowhere, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT["output_closed"]
    except ApiError as exc:
        err.print(error_text(f"{exc.status} {exc.title}: {exc.detail}"))
        for line in field_lines(exc):
            err.print(f"  {line}")
        if exc.status == 401:  # the detail speaks HTTP ("send Authorization: Bearer ...")
            source = "--api-key" if args.api_key else "GRADWATCH_API_KEY"
            err.print(f"  the key sent came from {source}" if key else
                      "  no key was sent: give one with --api-key KEY or GRADWATCH_API_KEY")
        return EXIT["error"]
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # a file named on the command line (a spec to read, an image to write): not the server
        err.print(error_text(f"cannot use {exc.filename}: {exc.strerror}" if exc.filename
                             else f"cannot use a file: {exc}"))
        return EXIT["usage"]
    except (json.JSONDecodeError, ValueError) as exc:
        err.print(error_text(f"cannot read the input: {exc}"))
        return EXIT["usage"]
    except (OSError, ConnectionError, httpx.HTTPError) as exc:
        err.print(error_text(f"cannot reach {url}: {exc}"))
        return EXIT["error"]
    except KeyboardInterrupt:  # Ctrl-C: no traceback
        err.print("interrupted")
        return EXIT["interrupted"]


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
