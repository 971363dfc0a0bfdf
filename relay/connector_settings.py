"""The settings a connector declares: typed, with defaults and help, parsed from NAME=VALUE.

A connector's configuration is its own: the relay hands over the options the user gave
(``--connector-option NAME=VALUE``, a file of such lines, or a connector's shorthand flags)
as text, and the connector's settings class turns them into typed values and checks them,
each problem one plain sentence (River's typed config with ``validate()``). A settings class
is a frozen dataclass deriving from ``ConnectorSettings``; each field made with ``setting()``
is one setting, typed by its annotation (str, int, float or bool)::

    @dataclass(frozen=True)
    class SpoolSettings(ConnectorSettings):
        connector_name: ClassVar[str] = "spool"
        directory: str = setting("", help="Where the files go.", required=True)
        token: str = setting("", help="Signs each file.", secret=True)
        fsync: bool = setting(True, help="fsync each file before confirming it.")

        def problems(self) -> list[str]:
            return [] if self.directory.strip() else ["The spool directory is empty."]

A name the class does not declare is refused (naming the closest one), unless the class has
a ``passthrough``: names handed verbatim to the client library (librdkafka properties).

Whether an option's value is secret is decided here and nowhere else: a setting declared
``secret=True``, or a pass-through name its ``Passthrough`` calls secret. relay/secrets.py
collects those values and scrubs them from every message and log line.
"""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self, TypeVar

from relay.errors import ConfigError

T = TypeVar("T")

_DECLARED = "outbox_relay_setting"
KIND_NAMES: dict[type, str] = {
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


@dataclass(frozen=True)
class _Declaration:
    name: str | None
    help: str
    secret: bool
    required: bool


def setting(
    default: T,
    *,
    help: str,
    name: str | None = None,
    secret: bool = False,
    required: bool = False,
) -> T:
    """One setting of a ``ConnectorSettings`` dataclass.

    ``name`` is what users write (``bootstrap.servers``); it defaults to the field's name.
    A ``secret`` value is never printed (errors, logs, ``outbox-relay connectors``).
    A ``required`` setting has no usable default; ``default`` only gives its type.
    """
    declaration = _Declaration(name, help, secret, required)
    return field(default=default, metadata={_DECLARED: declaration})


@dataclass(frozen=True)
class SettingInfo:
    """What a user can learn about one setting (``outbox-relay connectors NAME``)."""

    name: str
    attribute: str
    kind: type
    default: object
    help: str
    secret: bool
    required: bool

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]


@dataclass(frozen=True)
class Passthrough:
    """Option names a connector does not declare, handed verbatim to its client library."""

    what: str  # "librdkafka property": used in messages and in the listing
    reference: str  # where those names are documented
    secret_names: frozenset[str] = frozenset()
    # A name with one of these words is secret even when the list does not have it yet:
    # client libraries add properties faster than a list here follows them.
    secret_words: tuple[str, ...] = ("password", "secret")

    def is_secret(self, name: str) -> bool:
        lowered = name.lower()
        return lowered in self.secret_names or any(w in lowered for w in self.secret_words)


@dataclass(frozen=True)
class ConnectorSettings:
    """Base of every connector's settings; a class without fields takes no options."""

    connector_name: ClassVar[str] = "connector"
    passthrough: ClassVar[Passthrough | None] = None
    # The options that are not declared settings, for a class with a ``passthrough``.
    passed_through: Mapping[str, str] = field(default_factory=dict, kw_only=True)

    @classmethod
    def declared(cls) -> dict[str, SettingInfo]:
        """The declared settings by the name users write, in declaration order."""
        hints = typing.get_type_hints(cls)
        found: dict[str, SettingInfo] = {}
        for item in fields(cls):
            declaration = item.metadata.get(_DECLARED)
            if declaration is None:
                continue
            kind = hints[item.name]
            if kind not in KIND_NAMES or item.default is MISSING:
                raise TypeError(
                    f"{cls.__name__}.{item.name}: a setting is a str, int, float or bool "
                    "with a default"
                )
            name = declaration.name or item.name
            found[name] = SettingInfo(
                name,
                item.name,
                kind,
                item.default,
                declaration.help,
                declaration.secret,
                declaration.required,
            )
        return found

    @classmethod
    def is_secret(cls, name: str) -> bool:
        """Whether the value of option ``name`` is a secret: the one place that decides."""
        info = cls.declared().get(name)
        if info is not None:
            return info.secret
        return cls.passthrough is not None and cls.passthrough.is_secret(name)

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> Self:
        """Typed, validated settings from NAME=VALUE ``options``; a ConfigError lists
        every problem, each in one sentence that never quotes a secret."""
        declared = cls.declared()
        values: dict[str, Any] = {}
        passed: dict[str, str] = {}
        found: list[str] = []
        for name, text in options.items():
            info = declared.get(name)
            if info is None and cls.passthrough is not None:
                passed[name] = text
            elif info is None:
                found.append(cls._unknown(name, declared))
            else:
                try:
                    values[info.attribute] = _convert(text, info.kind)
                except ValueError:
                    found.append(cls._mistyped(info, text))
        found.extend(
            f"The {cls.connector_name} connector needs a value for {info.name}."
            for info in declared.values()
            if info.required and info.name not in options
        )
        if found:
            raise ConfigError(" ".join(found))
        return cls(**values, passed_through=passed).validate()

    def problems(self) -> list[str]:
        """Every problem with these values, each one plain sentence (connectors add theirs)."""
        return []

    def validate(self) -> Self:
        """Raise ConfigError listing every problem; return self when there are none."""
        found = self.problems()
        if found:
            raise ConfigError(" ".join(found))
        return self

    @classmethod
    def _unknown(cls, name: str, declared: Mapping[str, SettingInfo]) -> str:
        if not declared:
            return f"The {cls.connector_name} connector takes no settings, and {name!r} was given."
        close = difflib.get_close_matches(name, list(declared), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return (
            f"The {cls.connector_name} connector has no setting {name!r}{hint}; its settings "
            f"are {', '.join(declared)} (`outbox-relay connectors {cls.connector_name}` "
            "describes them)."
        )

    @classmethod
    def _mistyped(cls, info: SettingInfo, text: str) -> str:
        shown = "" if info.secret else f", not {text!r}"
        return f"The {cls.connector_name} connector's {info.name} must be {info.kind_name}{shown}."


def _convert(text: str, kind: type) -> object:
    if kind is str:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise ValueError(text)
    if kind is int:
        return int(text.strip())
    number = float(text.strip())
    if not math.isfinite(number):
        raise ValueError(text)
    return number
