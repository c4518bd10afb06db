"""The Docker files, checked without a Docker engine (none on these machines).

What can be checked: docker-compose.yml parses and wires the services as documented, no
credentials are committed, the Dockerfile follows the conventions (multi-stage, non-root,
health check, nothing but the virtualenv in the final stage), and the commands the image
runs are the gradwatch console commands the integration tests run (tests/test_integration.py).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_integration import COMMANDS

from app.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(arguments: str) -> list[str]:
    value = yaml.safe_load(arguments)  # a JSON array is YAML too
    assert isinstance(value, list), f"not in exec form: {arguments}"
    return [str(v) for v in value]


def test_compose_has_the_scale_out_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # `--scale worker=N`: nothing that must be unique per container
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["stop_signal"] == "SIGTERM"
    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        assert env["GRADWATCH_EXECUTOR"] == "celery"
        assert env["GRADWATCH_BROKER_URL"].startswith("redis://redis:6379/")
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert services[name]["image"] == services["api"]["image"]  # one image


def test_compose_uses_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert used == declared == {"pgdata", "redisdata"}


def test_no_credentials_are_committed(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|API_KEY", key):
                assert str(value).startswith("${"), (name, key)
            userinfo = re.search(r"://([^@/]*)@", re.sub(r"\$\{[^}]*\}", "$VAR", str(value)))
            if userinfo:  # a URL with credentials: both parts from the env file
                assert userinfo.group(1) == "$VAR:$VAR", (name, key)
    assert "${POSTGRES_PASSWORD:?" in text  # compose refuses to start without one
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["POSTGRES_PASSWORD"] == ""
    interpolated = set(re.findall(r"\$\{(\w+)", text))
    assert interpolated <= set(example), interpolated - set(example)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored


def test_the_image_runs_the_commands_the_integration_tests_run(
        compose: dict[str, Any], dockerfile: str) -> None:
    steps = instructions(dockerfile)
    entrypoint = exec_form(dict(steps)["ENTRYPOINT"])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["gradwatch"] and scripts["gradwatch"] == "app.cli:main"
    default = exec_form([v for k, v in steps if k == "CMD"][-1])
    roles = {"api": default, **{name: compose["services"][name]["command"]
                                for name in ("migrate", "api", "worker")}}
    parser = build_parser()
    for role, command in roles.items():
        argv = [*entrypoint, *command]
        assert argv[:2] == COMMANDS[role][:2], (role, argv)  # the subcommand the tests run
        parser.parse_args(argv[1:])  # and options gradwatch accepts (exits on a typo)
    assert compose["services"]["api"]["command"] == default


def test_the_dockerfile_is_multi_stage_slim_and_not_root(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    stages = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    assert len(stages) >= 2
    final = steps[stages[-1]:]
    assert "-slim" in final[0][1] and final[0][1].endswith("AS runtime")
    users = [v for k, v in final if k == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    assert any(k == "HEALTHCHECK" for k, _ in final)
    health = exec_form(dict(final)["HEALTHCHECK"].partition("CMD ")[2])
    assert health == ["python", "-m", "app.healthcheck"]
    final_text = " ".join(v for k, v in final if k == "RUN")
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final_text, tool
    copies = [v for k, v in final if k == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]  # the virtualenv, nothing else


def test_the_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", "tests", "bench", "data", "build"):
        assert path in ignored
    assert "README.md" not in ignored  # pyproject's readme: needed to build the package
