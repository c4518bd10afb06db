"""The `gradwatch` client commands as a person at a terminal uses them: Ctrl-C, a reader that
stops early (`| head -1`), text printed as the server holds it. Real processes, real server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from app.showcase import DIVERGING_SPEC
from client.cli import EXIT
from tests.conftest import SMALL_SPEC, LiveServer
from tests.test_cli_client import GRADWATCH

# long enough to still be training when the test interrupts it (a second or two in)
SLOW_SPEC = {"name": "slow", "data": {"source": "synthetic", "name": "spirals", "n_samples": 2000},
             "model": {"hidden": [{"units": 64}, {"units": 64}, {"units": 64}]},
             "training": {"epochs": 300, "batch_size": 8}}


# Runs a command as a terminal starts it: Ctrl-C's signal neither ignored nor blocked. A child
# inherits both from this test process, where a library or the CI's launcher (a background
# job of a non-interactive shell ignores SIGINT) may have changed them; Python then never
# raises KeyboardInterrupt (one CI run saw the CLI follow to the end, exit 0).
AS_AT_A_TERMINAL = [sys.executable, "-c",
                    "import os, signal, sys; "
                    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
                    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                    "os.execv(sys.argv[1], sys.argv[1:])"]


def _env(live: LiveServer) -> dict[str, str]:
    env = {**os.environ, "GRADWATCH_URL": live.url, "COLUMNS": "200"}
    env.pop("GRADWATCH_API_KEY", None)
    return env


def test_ctrl_c_while_following_says_the_job_goes_on(live: LiveServer, tmp_path: Path) -> None:
    """Ctrl-C during `submit --follow` stops watching, not the job: one line naming the job,
    how to watch it again and how to stop it, exit 130 (it was a KeyboardInterrupt
    traceback); then `gradwatch cancel` stops it and `gradwatch delete` removes it (the CLI
    had neither)."""
    spec = tmp_path / "slow.json"
    spec.write_text(json.dumps(SLOW_SPEC))
    proc = subprocess.Popen([*AS_AT_A_TERMINAL, GRADWATCH, "submit", str(spec), "--follow"],
                            env=_env(live),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("submitted job "), first
    job_id = first.split()[2]
    try:
        live.wait_for(job_id, {"running"})
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert proc.returncode == EXIT["interrupted"] == 130, err
        assert f"stopped following job {job_id}" in err
        assert f"gradwatch follow {job_id}" in err and f"gradwatch cancel {job_id}" in err
        assert live.http.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    finally:
        proc.kill()
        cancel = subprocess.run([GRADWATCH, "cancel", job_id], env=_env(live),
                                capture_output=True, text=True, timeout=60)
        live.wait_for(job_id, {"cancelled", "succeeded", "failed"})
    assert cancel.returncode == 0 and f"cancelling job {job_id}" in cancel.stderr, cancel.stderr
    assert live.http.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    again = subprocess.run([GRADWATCH, "cancel", job_id], env=_env(live), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == EXIT["error"] and "409" in again.stderr, again.stderr
    deleted = subprocess.run([GRADWATCH, "delete", job_id], env=_env(live),
                             capture_output=True, text=True, timeout=60)
    assert deleted.returncode == 0, deleted.stderr
    assert live.http.get(f"/v1/jobs/{job_id}").status_code == 404


def test_emoji_codes_in_names_are_printed_as_they_are(live: LiveServer, tmp_path: Path) -> None:
    """A name holding ``:fire:`` is listed as ``:fire:``: the tables turned emoji codes into
    emoji (a job named "lr:fire:test" listed as "lr🔥test")."""
    name = "lr:fire:test :thumbs_up:"
    spec = tmp_path / "named.json"
    spec.write_text(json.dumps({**SMALL_SPEC, "name": name}))
    submitted = subprocess.run([GRADWATCH, "submit", str(spec)], env=_env(live),
                               capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    listed = subprocess.run([GRADWATCH, "jobs", "--limit", "50"], env=_env(live),
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout and "🔥" not in listed.stdout


def test_a_reader_that_stops_early_ends_the_command_quietly(live: LiveServer, tmp_path: Path
                                                             ) -> None:
    """`gradwatch ... | head -1`: once the reader has closed the pipe, the command stops without
    a word and exits 141 (as a command killed by SIGPIPE). It said "cannot reach the server:
    Broken pipe" (export, predict, --json) or exited 1 in silence (tables): a server error's
    code."""
    spec = tmp_path / "small.json"
    spec.write_text(json.dumps(SMALL_SPEC))
    job_id = subprocess.run([GRADWATCH, "submit", str(spec)], env=_env(live),
                            capture_output=True, text=True, timeout=60).stdout.strip()
    live.wait_for(job_id, {"succeeded"})
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((5000, 2)))
    for command in (["jobs"], ["jobs", "--json"], ["diagnose", job_id],
                    ["export", job_id, "gradients"], ["predict", job_id, "-i", str(rows)]):
        proc = subprocess.Popen([GRADWATCH, *command], env=_env(live), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.close()  # the reader is gone before the first line
        _, err = proc.communicate(timeout=60)
        assert err == "", (command, err)
        assert proc.returncode == EXIT["output_closed"] == 141, (command, err)


def test_json_output_is_json_with_nan_and_inf_as_the_api_writes_them(live: LiveServer,
                                                                      tmp_path: Path) -> None:
    """`jobs --json` of an exploded run: the API's "Infinity"/"NaN" strings, not the bare
    tokens Infinity/NaN that no strict JSON parser (JavaScript, Go, serde) accepts."""
    spec = tmp_path / "diverging.json"
    spec.write_text(json.dumps(DIVERGING_SPEC))
    job_id = subprocess.run([GRADWATCH, "submit", str(spec)], env=_env(live),
                            capture_output=True, text=True, timeout=60).stdout.strip()
    live.wait_for(job_id, {"succeeded"})
    listed = subprocess.run([GRADWATCH, "jobs", "--json", "--limit", "200"], env=_env(live),
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in the output: not JSON")

    jobs = {j["id"]: j for j in json.loads(listed.stdout, parse_constant=refuse)}
    api = live.http.get(f"/v1/jobs/{job_id}").json()["latest"]
    assert jobs[job_id]["latest"] == api and "Infinity" in json.dumps(api)
