"""SVG rendering from many threads at once (the server renders plots in a thread pool)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import matplotlib
import numpy as np

from app import plots
from app.stability_plot import render_stability_map

LAYER = plots.Series(np.arange(50), np.geomspace(1.0, 1e6, 50), "layer 0")


def job_plot(_: int) -> bytes:
    return plots.gradients_plot([LAYER], plots.Marks(), title="job plot", fmt="svg")


def stability_map(_: int) -> bytes:
    return render_stability_map("lr", "std", [0.01, 0.1], [0.1, 1.0],
                                [["healthy", "exploding"], ["healthy", "healthy"]],
                                title="the map", fmt="svg")


def test_concurrent_svgs_keep_their_own_settings_and_leave_none_behind() -> None:
    """Job plots write text as <text>, stability maps as glyph paths (each title then in a
    comment); rendered side by side in 8 threads, each keeps its own, and matplotlib's
    global settings are as they were (matplotlib.rc_context alone let one thread restore
    another's settings, which then held for every later image)."""
    before = dict(matplotlib.rcParams)
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(job_plot, i) for i in range(40)]
        maps = [pool.submit(stability_map, i) for i in range(40)]
        job_svgs = [f.result() for f in jobs]
        map_svgs = [f.result() for f in maps]
    assert all(b">job plot</text>" in svg for svg in job_svgs)
    assert all(b"<!-- the map -->" in svg and b">the map</text>" not in svg for svg in map_svgs)
    assert dict(matplotlib.rcParams) == before
    assert stability_map(0) == map_svgs[0] and job_plot(0) == job_svgs[0]  # same bytes
