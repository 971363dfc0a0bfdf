"""``outbox-relay connectors [NAME]``: the installed connectors, and one's settings.

What Kafka Connect's ``/connector-plugins`` and a plugin's config definition tell its
users: which connectors there are, and for one of them every setting with its type,
default and meaning, which values are secret and which shorthand flags set them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Annotated, Any

import typer

from relay.cli.connector_options import OPTION_ENV, shorthands_of
from relay.connector import connector_factory, installed_connectors
from relay.connector_settings import ConnectorSettings, SettingInfo
from relay.errors import ConfigError
from relay.secrets import redact

WIDTH = 88
HOW_TO_GIVE = (
    f"Give settings with --connector-option NAME=VALUE (repeatable), in {OPTION_ENV} (one "
    "NAME=VALUE per line), or as NAME=VALUE lines of a file only you can read "
    "(--connector-option-file PATH, for secrets). See docs/connector-settings.md."
)
NameArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="[NAME]",
        show_default=False,
        help="A connector's name: describe its settings.",
    ),
]


def build_connectors_command(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``connectors`` to ``app``; ``guard`` turns failures into one clear line."""

    @app.command("connectors")
    @guard
    def connectors_command(name: NameArgument = None) -> None:
        """List the installed connectors, or the settings of connector NAME."""
        typer.echo(describe_connector(name) if name else list_connectors())


def list_connectors() -> str:
    """One line per installed connector: its name and what it does (or what it lacks)."""
    lines = []
    for name in installed_connectors():
        try:
            summary = _summary(connector_factory(name))
        except ConfigError as exc:  # e.g. its client library is not installed
            summary = f"(not usable: {exc})"
        lines.append(f"{name:<12} {summary}")
    lines.append("")
    lines.append("`outbox-relay connectors NAME` lists the settings of connector NAME.")
    return "\n".join(lines)


def describe_connector(name: str) -> str:
    """Every setting of connector ``name``, how to give them, and which are secret."""
    factory = connector_factory(name)
    settings: type[ConnectorSettings] = factory.settings
    declared = settings.declared()
    lines = [f"{name}: {_summary(factory)}", ""]
    if declared:
        lines.append("Settings:")
        shorthands = shorthands_of(name)
        for info in declared.values():
            lines.extend(_setting_lines(info, shorthands.get(info.name, [])))
    else:
        lines.append(f"The {name} connector has no settings of its own.")
    if settings.passthrough is not None:
        passthrough = settings.passthrough
        secret = ", ".join(sorted(passthrough.secret_names))
        words = " or ".join(passthrough.secret_words)
        lines.append("")
        lines.extend(
            _wrapped(
                f"Any other NAME is a {passthrough.what}, passed through verbatim "
                f"({passthrough.reference}). Secret, so never printed: {secret}, and any "
                f"name with {words} in it."
            )
        )
    if declared or settings.passthrough is not None:
        lines.append("")
        lines.extend(_wrapped(HOW_TO_GIVE))
    return "\n".join(lines)


def _setting_lines(info: SettingInfo, shorthands: list[str]) -> list[str]:
    traits = [info.kind_name]
    if info.secret:
        traits.append("secret")
    if info.required:
        traits.append("required")
    else:
        default = str(info.default).lower() if info.kind is bool else str(info.default)
        traits.append(f"default {_shown(default, secret=info.secret)}")
    if shorthands:
        traits.append("shorthand " + ", ".join(shorthands))
    return [f"  {info.name}  ({'; '.join(traits)})", *_wrapped(info.help, indent="      ")]


def _wrapped(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _shown(default: str, *, secret: bool) -> str:
    if not default:
        return "(empty)"
    if not secret:
        return default
    hidden = redact(default)  # a URL keeps its host and loses its password
    return hidden if hidden != default else "***"


def _summary(factory: Any) -> str:
    doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
    return doc[0].replace("``", "") if doc else ""
