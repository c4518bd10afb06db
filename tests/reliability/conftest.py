"""A real ``gradwatch serve`` process under a memory cap, for the reliability suite."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# The API process may use this much data memory (RLIMIT_DATA: heap and anonymous mappings);
# a request that would need more kills it, which the tests would see.
API_DATA_LIMIT = 1024 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("GRADWATCH_") and k != "DATABASE_URL"}
        self.env = {**base, "PYTHONUNBUFFERED": "1", "GRADWATCH_DATA_DIR": str(tmp),
                    "GRADWATCH_WORKERS": "0", **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> Server:
        def cap() -> None:
            resource.setrlimit(resource.RLIMIT_DATA, (API_DATA_LIMIT, API_DATA_LIMIT))

        script = Path(sys.executable).with_name("gradwatch")
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(script), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=cap,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def alive(self) -> bool:
        """The process still runs and answers /healthz."""
        assert self.process is not None
        return self.process.poll() is None and self.http.get("/healthz").status_code == 200

    def peak_rss(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(kib) * 1024

    def stop(self) -> None:
        self.http.close()
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``gradwatch serve`` (SQLite, no workers unless asked) under RLIMIT_DATA."""
    servers: list[Server] = []

    def start(**env: Any) -> Server:
        sub = tmp_path / f"server{len(servers)}"
        sub.mkdir()
        server = Server(sub, {k: str(v) for k, v in env.items()})
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
