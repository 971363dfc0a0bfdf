"""deploy/Dockerfile and .dockerignore: multi-stage, locked, non-root, healthy."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess

import pytest

from relay.config import DEFAULT_METRICS_PORT
from tests.deploy.contract import DEPLOY, HEALTH_PATHS, ROOT, parse_args, project

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append(current.strip())
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction, args in instructions():
        if instruction == "FROM":
            found.append([])
        if found:
            found[-1].append((instruction, args))
    return found


def final(instruction: str) -> list[str]:
    return [args for name, args in stages()[-1] if name == instruction]


def arg_default(name: str) -> str:
    for instruction, args in instructions():
        if instruction == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


def runtime_uid() -> int:
    (user,) = final("USER")
    return int(user.split(":")[0])


def test_it_builds_in_stages_from_python_3_11_slim():
    assert len(stages()) >= 2
    base = arg_default("PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base)
    assert all(
        args.split()[0] == "${PYTHON_IMAGE}" for name, args in instructions() if name == "FROM"
    )
    assert ">=3.11" in project()["requires-python"]


def test_dependencies_come_from_the_lock_file_without_dev_tools():
    build = stages()[0]
    runs = [args for name, args in build if name == "RUN"]
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs)
    copied = " ".join(args for name, args in build if name == "COPY")
    assert "uv.lock" in copied and "pyproject.toml" in copied
    assert re.search(r"uv==\d+\.\d+\.\d+", " ".join(runs)), "pin uv's version"


def test_the_image_holds_the_client_of_every_connector_it_ships():
    """The brokers' clients are extras of the wheel: an image without them could run
    neither connector."""
    syncs = [args for name, args in stages()[0] if name == "RUN" and "uv sync" in args]
    assert all("--extra all" in s or "--all-extras" in s for s in syncs)
    extras = project()["optional-dependencies"]
    assert extras["all"] == ["outbox-relay[kafka,rabbitmq]"]


def test_everything_the_wheel_is_built_from_is_copied_and_not_ignored():
    hatch = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]
    wheel = hatch["build"]["targets"]["wheel"]
    needed = [*wheel["packages"], *wheel.get("force-include", {}), project()["readme"]]
    copied = " ".join(args for name, args in stages()[0] if name == "COPY")
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in needed:
        assert path in copied, f"{path} is not copied into the build stage"
        assert not ignored(path, ignore), f".dockerignore leaves {path} out of the context"
    for secret_like in (".venv", ".env", "tests", ".git", "deploy/compose/secrets"):
        assert ignored(secret_like, ignore), f"{secret_like} would be sent to the builder"


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
            verdict = not negated
    return verdict


def test_the_runtime_user_is_not_root_and_owns_nothing_it_runs():
    uid = runtime_uid()
    assert uid >= 1000
    creates = " ".join(args for name, args in stages()[-1] if name == "RUN")
    assert f"--uid {uid}" in creates and "--shell /usr/sbin/nologin" in creates
    assert final("USER")[-1] == final("USER")[0]  # no switching back to root


def test_the_entrypoint_is_the_installed_command_and_defaults_to_run():
    (entrypoint,) = final("ENTRYPOINT")
    (cmd,) = final("CMD")
    assert json.loads(entrypoint) == ["outbox-relay"]
    assert "outbox-relay" in project()["scripts"]
    parse_args(json.loads(cmd))  # `outbox-relay run` parses
    assert final("STOPSIGNAL") == ["SIGTERM"]


def test_the_healthcheck_asks_the_health_endpoint_with_python_on_the_metrics_port():
    (check,) = final("HEALTHCHECK")
    assert "CMD" in check
    command = json.loads(check.split("CMD", 1)[1])
    script = command[-1]
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in script and "/healthz" in HEALTH_PATHS
    assert f"'{DEFAULT_METRICS_PORT}'" in script and "OUTBOX_RELAY_METRICS_PORT" in script
    assert "127.0.0.1" in script  # inside the container: works with the default bind
    assert "curl" not in check and "wget" not in check
    compile(script, "HEALTHCHECK", "exec")
    assert final("EXPOSE") == [str(DEFAULT_METRICS_PORT)]


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_hadolint_finds_nothing_serious():
    result = subprocess.run(
        ["hadolint", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
