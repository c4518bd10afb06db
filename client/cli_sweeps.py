"""``gradwatch sweep submit|list|get|wait|cancel|delete|map|launch``: stability maps from the
command line
(see :mod:`client.cli` for the exit codes; a waited sweep exits 0 once every member ran,
whatever their verdicts, 5 when a member failed, 6 when it was cancelled)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.cli import (
    EXIT,
    err,
    error_text,
    exit_code,
    fmt_value,
    follow_job,
    image_file,
    out,
    patch_json,
    print_json,
    print_outcome,
    stopped_following,
)
from client.models import AxisValue, StabilityMap, Sweep, SweepSummary
from client.sync import Client

__all__ = ["axis_value", "held_axis_problem", "log_axis", "member_choice", "patch_json",
           "plotted_axes", "register_sweeps", "values_axis"]


def axis_value(text: str) -> AxisValue:
    """An axis value from the command line: an int, else a finite float, else ``true`` /
    ``false`` as a boolean, else the string itself (``he_normal``)."""
    for parse in (int, float):
        try:
            number: int | float = parse(text)
        except ValueError:
            continue
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return number
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _split(text: str, option: str, form: str) -> tuple[str, str]:
    path, sep, rest = text.partition("=")
    path = path.strip()
    if not sep or not path or not rest.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected {option} {form}")
    return path, rest


def values_axis(text: str) -> dict[str, Any]:
    """``--axis PATH=v1,v2,...``: an axis with ``values``."""
    form = "PATH=V1,V2,... (e.g. optimizer.lr=0.01,0.1)"
    path, rest = _split(text, "--axis", form)
    items = [v.strip() for v in rest.split(",")]
    if any(not v for v in items):
        raise argparse.ArgumentTypeError(f"{text!r}: an empty value; expected --axis {form}")
    return {"path": path, "values": [axis_value(v) for v in items]}


def log_axis(text: str) -> dict[str, Any]:
    """``--log-axis PATH=LO:HI:N``: ``N`` log-spaced values from ``LO`` to ``HI``."""
    form = "PATH=LOW:HIGH:POINTS (e.g. optimizer.lr=1e-3:1:8)"
    path, rest = _split(text, "--log-axis", form)
    parts = rest.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        low, high, points = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected --log-axis {form}") from None
    if not (0 < low < math.inf and 0 < high < math.inf) or points < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r}: LOW and HIGH must be finite and > 0, POINTS at least 2")
    return {"path": path, "log_range": [low, high], "points": points}


def _at_value(text: str) -> tuple[str, AxisValue]:
    path, rest = _split(text, "--at", "PATH=VALUE (another axis held at VALUE)")
    return path, axis_value(rest.strip())


def plotted_axes(paths: list[str], x: str | None, y: str | None) -> tuple[str, str] | None:
    """The map's (x, y) over a sweep's axis ``paths`` as the API picks them (x: the last axis,
    y: the first other one, unless given); None when the server will refuse them anyway."""
    if len(paths) < 2:
        return None
    x = x or paths[-1]
    y = y or (paths[0] if paths[0] != x else paths[1])
    return (x, y) if x != y and {x, y} <= set(paths) else None


def held_axis_problem(paths: list[str], args: argparse.Namespace) -> str | None:
    """Why ``--at`` cannot hold what it names: an axis the map plots, or no axis of the sweep;
    None when it can. For ``sweep submit --map``, before the sweep is submitted (the server
    refuses such an ``at`` with a 422 when the map is asked for, by then too late)."""
    axes = plotted_axes(paths, args.x, args.y)
    for path, _ in args.at or []:
        if path not in paths:
            return f"--at {path}=...: {path} is not an axis of this sweep; axes: {paths}"
        if axes is not None and path in axes:
            which = "x (across)" if path == axes[0] else "y (up)"
            return (f"--at {path}=...: {path} is the map's {which} axis, so it is not held; "
                    f"--at holds the other axes (give another --x/--y to hold this one)")
    return None


def member_choice(text: str) -> int | str:
    """``--member``: a member index, or ``recommended``."""
    if text.strip().lower() == "recommended":
        return "recommended"
    try:
        index = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a member index (0, 1, ...) or 'recommended'") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a member index is 0 or more")
    return index


def _member_table(sweep: Sweep) -> Table:
    table = Table()
    table.add_column("#", justify="right")
    paths = sweep.paths
    for column in (*paths, "status", "verdict", "first bad step", "final loss"):
        table.add_column(column, overflow="fold")
    for m in sweep.members:
        table.add_row(str(m.index), *(fmt_value(m.values.get(p)) for p in paths), m.status,
                      m.verdict or "-", fmt_value(m.first_bad_step), fmt_value(m.final_loss))
    return table


def _summary(sweep: Sweep) -> str:
    verdicts: dict[str, int] = {}
    for m in sweep.members:
        if m.verdict:
            verdicts[m.verdict] = verdicts.get(m.verdict, 0) + 1
    counts = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) or "no verdicts yet"
    done = (f"{sweep.progress.members_done}/{sweep.progress.members} members done"
            if sweep.progress else f"{len(sweep.members)} members")
    name = f" ({sweep.name})" if sweep.name else ""
    return f"sweep {sweep.id}{name} {sweep.status}: {done}; {counts}"


def _show(sweep: Sweep, as_json: bool) -> None:
    if as_json:
        print_json(sweep.model_dump(mode="json"))
        return
    out.print(_summary(sweep))
    out.print(_member_table(sweep))


def _exit_code(sweep: Sweep) -> int:
    return {"failed": EXIT["failed"], "cancelled": EXIT["cancelled"]}.get(sweep.status,
                                                                       EXIT["ok"])


def _follow(gw: Client, sweep: Sweep, *, quiet: bool) -> Sweep:
    """A progress bar (steps of every member; members done) from the sweep's events."""
    columns = [TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
               TaskProgressColumn(),
               TextColumn("members {task.fields[done]}"), TextColumn("{task.fields[verdicts]}"),
               TimeElapsedColumn()]
    total = sweep.progress.total_steps if sweep.progress else 0
    with stopped_following(f"sweep {sweep.id}", f"gradwatch sweep wait {sweep.id}",
                           f"gradwatch sweep cancel {sweep.id}"), \
            Progress(*columns, console=err, disable=quiet) as bar:
        task = bar.add_task(sweep.name or sweep.id[:8], total=total or 1, done="-",
                            verdicts="")
        for event in gw.follow_sweep(sweep.id):
            progress = event.data.get("progress") or {}
            verdicts = event.data.get("verdicts") or {}
            total = progress.get("total_steps") or 1
            # a member that stopped early never reaches its total: a finished sweep is full
            bar.update(task, completed=total if event.terminal else progress.get("step", 0),
                       total=total,
                       done=f"{progress.get('members_done', 0)}/{progress.get('members', 0)}",
                       verdicts=" ".join(f"{v} {n}" for v, n in sorted(verdicts.items())))
    return gw.sweep(sweep.id)


def _write_map(gw: Client, sweep_id: str, path: str, args: argparse.Namespace
               ) -> StabilityMap:
    """Write the map to ``path``; the grid it draws."""
    at = dict(args.at or [])
    grid = gw.stability(sweep_id, x=args.x, y=args.y, at=at)
    data = gw.plot_stability(sweep_id, path, x=args.x, y=args.y, at=at)
    err.print(f"wrote {path} ({len(data):,} bytes): {grid.y} (rows) x {grid.x} (columns)")
    return grid


def _show_boundary(grid: StabilityMap) -> None:
    table = Table(title="Boundary per row (largest healthy / smallest exploding "
                        f"{grid.x}; preflight's prediction)")
    for column in (grid.y, "largest healthy", "smallest exploding", "predicted exploding"):
        table.add_column(column, overflow="fold")
    for row in grid.rows:
        table.add_row(fmt_value(row.y), fmt_value(row.largest_healthy), fmt_value(row.smallest_exploding),
                      fmt_value(row.smallest_predicted_exploding))
    out.print(table)
    cal = grid.calibration
    if cal.get("cells"):
        out.print(f"preflight agreed with the measured verdict on "
                  f"{cal['true_exploding'] + cal['true_safe']} of {cal['cells']} cells")


def _cmd_submit(gw: Client, args: argparse.Namespace) -> int:
    if not args.axes:
        err.print(error_text("give at least one --axis PATH=V1,V2,... or "
                         "--log-axis PATH=LOW:HIGH:POINTS"))
        return EXIT["usage"]
    if (args.x or args.y or args.at) and not args.map:  # they choose the map's view
        err.print(error_text("--x, --y and --at choose the map's view: give --map FILE too "
                             "(or draw it later with gradwatch sweep map)"))
        return EXIT["usage"]
    if args.map and (problem := held_axis_problem([a["path"] for a in args.axes], args)):
        err.print(error_text(problem))
        return EXIT["usage"]
    sweep = gw.submit_sweep(args.spec, args.axes, name=args.name)
    if not (args.wait or args.map):
        if args.json:
            _show(sweep, True)
        else:
            err.print(f"submitted sweep {sweep.id}: {len(sweep.members)} members")
            out.print(sweep.id)
        return EXIT["ok"]
    err.print(f"submitted sweep {sweep.id}: {len(sweep.members)} members")
    return _finish(gw, _follow(gw, sweep, quiet=args.json), args)


def _finish(gw: Client, sweep: Sweep, args: argparse.Namespace) -> int:
    _show(sweep, args.json)
    if getattr(args, "map", None):
        grid = _write_map(gw, sweep.id, args.map, args)
        if not args.json:  # stdout holds one JSON document: the sweep's
            _show_boundary(grid)
    return _exit_code(sweep)


def _verdict_counts(verdicts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) or "-"


def _cmd_list(gw: Client, args: argparse.Namespace) -> int:
    page = gw.list_sweeps(status=args.status, limit=args.limit)
    if args.json:
        print_json([s.model_dump(mode="json") for s in page.items])
        return EXIT["ok"]
    out.print(_sweep_table(page.items))
    return EXIT["ok"]


def _sweep_table(sweeps: list[SweepSummary]) -> Table:
    table = Table()
    table.add_column("id", no_wrap=True)
    for column in ("name", "status", "members", "verdicts", "created (UTC)"):
        table.add_column(column, overflow="fold")
    for s in sweeps:
        members = (f"{s.progress.members_done}/{s.progress.members}" if s.progress
                   else str(s.member_count))
        created = (s.created_at or "-")[:19].replace("T", " ")
        table.add_row(s.id, s.name or "-", s.status, members, _verdict_counts(s.verdicts),
                      created)
    return table


def _cmd_launch(gw: Client, args: argparse.Namespace) -> int:
    job = gw.launch_sweep(args.sweep_id, member=args.member, spec_patch=args.patch,
                          x=args.x, y=args.y, at=dict(args.at) if args.at else None,
                          name=args.name, idempotency_key=args.idempotency_key)
    origin = job.launched_from or {}
    how = "the recommended member" if origin.get("recommended") else "member"
    values = ", ".join(f"{k}={fmt_value(v)}" for k, v in (origin.get("values") or {}).items())
    err.print(f"launched job {job.id} like {how} {origin.get('member')} ({values}) of sweep "
              f"{args.sweep_id}")
    if not args.wait:
        if args.json:
            print_json(job.model_dump(mode="json"))
        else:
            out.print(job.id)
        return EXIT["ok"]
    final = follow_job(gw, job, quiet=args.json)
    if args.json:
        print_json(final.model_dump(mode="json"))
        return exit_code(final)
    return print_outcome(gw, final)


def _cmd_get(gw: Client, args: argparse.Namespace) -> int:
    _show(gw.sweep(args.sweep_id), args.json)
    return EXIT["ok"]


def _cmd_wait(gw: Client, args: argparse.Namespace) -> int:
    return _finish(gw, _follow(gw, gw.sweep(args.sweep_id), quiet=args.json), args)


def _cmd_cancel(gw: Client, args: argparse.Namespace) -> int:
    sweep = gw.cancel_sweep(args.sweep_id)
    unfinished = sum(m.status in ("queued", "running") for m in sweep.members)
    err.print(f"cancelling sweep {sweep.id}: {unfinished} unfinished members stop within "
              "one flush")
    return EXIT["ok"]


def _cmd_delete(gw: Client, args: argparse.Namespace) -> int:
    gw.delete_sweep(args.sweep_id)
    err.print(f"deleted sweep {args.sweep_id} and its member jobs")
    return EXIT["ok"]


def _cmd_map(gw: Client, args: argparse.Namespace) -> int:
    grid = _write_map(gw, args.sweep_id, args.output, args)
    if args.json:
        print_json(grid.model_dump(mode="json"))
    else:
        _show_boundary(grid)
    return EXIT["ok"]


def _map_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--x", default=None, help="axis across (default: the last axis)")
    p.add_argument("--y", default=None, help="axis up (default: the first axis)")
    p.add_argument("--at", action="append", type=_at_value, default=None, metavar="PATH=VALUE",
                   help="hold another axis at VALUE (default: its first value)")


def register_sweeps(add: Callable[..., argparse.ArgumentParser], nest: Callable[..., Any]
                    ) -> None:
    """sweep submit|list|get|wait|cancel|delete|map|launch."""
    sweep = nest("sweep", "stability maps: sweep a spec over axes, every member a job")
    p = add("submit", _cmd_submit, "sweep a spec (JSON file) over axes", sub=sweep)
    p.add_argument("spec", help="the base TrainingSpec JSON file")
    p.add_argument("--axis", dest="axes", action="append", type=values_axis, default=None,
                   metavar="PATH=V1,V2,...",
                   help="an axis and its values: numbers (ints stay ints), true/false, else "
                        "strings (model.init.scheme=he_normal,xavier_normal); repeatable")
    p.add_argument("--log-axis", dest="axes", action="append", type=log_axis, default=None,
                   metavar="PATH=LOW:HIGH:POINTS", help="POINTS log-spaced values; repeatable")
    p.add_argument("--name", default=None)
    p.add_argument("--wait", action="store_true", help="progress bar, then the members")
    p.add_argument("--map", default=None, metavar="FILE", type=image_file,
                   help="after waiting, write the stability map (FILE.png or FILE.svg)")
    _map_options(p)
    p.add_argument("--json", action="store_true", help="the sweep as JSON")
    p = add("get", _cmd_get, "a sweep's status and members", sub=sweep)
    p.add_argument("sweep_id")
    p.add_argument("--json", action="store_true")
    p = add("wait", _cmd_wait, "watch a sweep until every member ran", sub=sweep)
    p.add_argument("sweep_id")
    p.add_argument("--json", action="store_true")
    p = add("cancel", _cmd_cancel, "cancel a sweep's unfinished members", sub=sweep)
    p.add_argument("sweep_id")
    p = add("delete", _cmd_delete, "delete a finished sweep and its member jobs", sub=sweep)
    p.add_argument("sweep_id")
    p = add("map", _cmd_map, "write the stability map (PNG or SVG) and print the boundary",
            sub=sweep)
    p.add_argument("sweep_id")
    p.add_argument("output", metavar="FILE", type=image_file, help="FILE.png or FILE.svg")
    _map_options(p)
    p.add_argument("--json", action="store_true", help="the grid as JSON (not the boundary)")
    p = add("list", _cmd_list, "list sweeps, newest first", sub=sweep)
    p.add_argument("--status", action="append", default=None,
                   choices=["queued", "running", "succeeded", "failed", "cancelled"],
                   help="only sweeps in this status; repeatable")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="the sweeps as JSON")
    p = add("launch", _cmd_launch, "launch the real run like a member (default: the "
                                   "recommended one) as a new job", sub=sweep)
    p.add_argument("sweep_id")
    p.add_argument("--member", type=member_choice, default="recommended", metavar="N",
                   help="a member index, or 'recommended' (default)")
    p.add_argument("--patch", type=patch_json, default=None, metavar="JSON|@FILE",
                   help='merge patch for the member\'s spec, e.g. \'{"training": {"epochs": '
                        '200}}\' or @patch.json')
    p.add_argument("--name", default=None, help="the new job's name")
    p.add_argument("--idempotency-key", default=None)
    _map_options(p)
    p.add_argument("--wait", action="store_true", help="follow the job, then its outcome")
    p.add_argument("--json", action="store_true", help="the job as JSON")
