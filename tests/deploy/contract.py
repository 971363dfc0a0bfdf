"""What the deployment files must agree with: the CLI's commands, flags, environment
variables and defaults, read from the typer app itself (never from a copy)."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

import typer.main
import yaml

from relay import config as defaults
from relay.cli.app import app
from relay.durations import parse_duration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CLI: Any = typer.main.get_command(app)
# What the metrics/health server serves (relay/health.py); the e2e tests GET each one.
HEALTH_PATHS = {"/healthz", "/readyz", "/metrics"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def command(*path: str) -> Any:
    found = CLI
    for name in path:
        found = found.commands[name]
    return found


def envvars(*path: str) -> set[str]:
    """Environment variables of one command's options."""
    names: set[str] = set()
    for param in command(*path).params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def parse_args(args: list[str], environment: dict[str, str] | None = None) -> dict[str, Any]:
    """Parse ``outbox-relay ARGS`` like the real command would, without running it.

    Raises click's UsageError/BadParameter for an unknown command or flag or a bad value.
    Returns the subcommand's parameters (environment variables applied).
    """
    name, *rest = args
    sub = CLI.commands[name]
    while hasattr(sub, "commands") and rest and not rest[0].startswith("-"):
        sub = sub.commands[rest.pop(0)]
    import os

    saved = {k: v for k, v in os.environ.items() if k.startswith("OUTBOX_RELAY_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(environment or {})
        context = sub.make_context(name, list(rest))
        return dict(context.params)
    finally:
        for key in [k for k in os.environ if k.startswith("OUTBOX_RELAY_")]:
            del os.environ[key]
        os.environ.update(saved)


def shutdown_seconds(environment: dict[str, str]) -> float:
    value = environment.get("OUTBOX_RELAY_SHUTDOWN_TIMEOUT")
    return parse_duration(value, "shutdown") if value else defaults.DEFAULT_SHUTDOWN_TIMEOUT


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def shell_words(text: str) -> list[str]:
    return shlex.split(text.replace("\\\n", " "))
