"""A real HTTP receiver on 127.0.0.1 for webhook tests: records every request it gets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fastapi.testclient import TestClient

from app.delivery import DeliveryLoop


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """``answer(request_number_for_this_message_id) -> status`` decides each answer."""

    def __init__(self, answer: Callable[[int], int] | None = None) -> None:
        self.answer = answer or (lambda n: 200)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    seen = sum(1 for r in receiver.received
                               if r.headers.get("webhook-id") == headers.get("webhook-id"))
                    status = receiver.answer(seen + 1)
                    receiver.received.append(Received(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"try again")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, job_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.payload["data"].get("job_id") == job_id]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 90,
                 what: str = "deliveries") -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                snapshot = list(self.received)
            if predicate(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got "
                                     f"{[(r.payload['type'], r.status) for r in snapshot]}")
            time.sleep(0.05)


def deliver(client: TestClient, receiver: Receiver, count: int, timeout: float = 30) -> None:
    """Run the API app's delivery loop until ``receiver`` got ``count`` requests, then a few
    more passes (so that a duplicate would arrive too)."""
    state: Any = client.app.state  # type: ignore[attr-defined]
    loop = DeliveryLoop(state.settings, state.sessionmaker)
    try:
        deadline = time.monotonic() + timeout
        while len(receiver.received) < count:
            assert time.monotonic() < deadline, receiver.received
            loop.run_once()
            time.sleep(0.02)
        for _ in range(5):
            loop.run_once()
    finally:
        loop.stop()
