"""``python -m app.healthcheck``: the container health check (the Dockerfile's HEALTHCHECK).

One image runs as the API or as a worker, so the check serves both: healthy when this
container's API answers ``/healthz`` on ``$PORT`` (default 8000), or, where no API listens,
when a Celery worker of this host (node ``...@<hostname>``) answers a ping through the
broker. Exit status 0 = healthy, 1 = not.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request

__all__ = ["api_alive", "main", "worker_alive"]


def api_alive(port: int, timeout: float = 3.0) -> bool | None:
    """True/False when an API listens on ``port`` here; None when nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return bool(r.status == 200)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return None
        return False
    except OSError:
        return False


def worker_alive(timeout: float = 3.0) -> bool:
    """True when a Celery worker running on this host answers a ping."""
    from app.celery_app import create_celery
    from app.settings import Settings

    celery = create_celery(Settings())
    try:
        replies = celery.control.ping(timeout=timeout) or []
    finally:
        celery.close()
    here = f"@{socket.gethostname()}"
    return any(name.endswith(here) for reply in replies for name in reply)


def main() -> int:
    api = api_alive(int(os.environ.get("PORT", "8000")))
    healthy = api if api is not None else worker_alive()
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
