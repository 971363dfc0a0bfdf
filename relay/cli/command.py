"""How every ``outbox-relay`` command parses and shows its options.

``RelayTyper`` is ``typer.Typer`` whose commands (and the group itself):

- refuse a single-value option given twice (``--schema a --schema b``): click keeps the
  last one silently, and a typo in a long command line would go unnoticed;
- show a metavar that means something (``DURATION``, ``URL``, ``N``) instead of the
  annotation (``<str>``, ``<bool>`` on every line), and nothing for flags;
- never cut a long default in ``--help`` (``amqp://guest:guest@localhost:5672/%2F``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from rich.columns import Columns


def repeated_option(command: Any, ctx: typer.Context, args: list[str]) -> TyperOption | None:
    """The first single-value option that ``args`` give more than once, or None."""
    # The parser consumes the list it is given, and records each option as it meets it.
    _, _, order = command.make_parser(ctx).parse_args(args=list(args))
    seen: set[int] = set()
    for param in order:
        if not isinstance(param, TyperOption) or param.multiple or param.count:
            continue
        if id(param) in seen:
            return param
        seen.add(id(param))
    return None


_METAVAR_BY_SUFFIX = (
    ("-url", "URL"),
    ("-file", "FILE"),
    ("-option", "NAME=VALUE"),
    ("-bootstrap", "HOST:PORT"),
    ("-exchange", "NAME"),
)


def _fallback_metavar(option: TyperOption) -> str:
    """A metavar for an option that did not set one."""
    if option.is_flag:
        return ""  # a flag takes no value: show none
    name = option.opts[0]
    for suffix, metavar in _METAVAR_BY_SUFFIX:
        if name.endswith(suffix):
            return metavar
    annotation = option.type_descriptor.annotation
    return "N" if annotation in (int, int | None) else "TEXT"


def _no_type(ctx: Any) -> None:
    return None


class _RelayParsing:
    """Mixed into typer's command and group classes (before them)."""

    params: list[Any]

    def _name_the_values(self) -> None:
        for param in self.params:
            if isinstance(param, TyperOption) and param.metavar is None:
                param.metavar = _fallback_metavar(param)
            elif isinstance(param, TyperArgument):
                # its metavar already names it ("ID..."); no "<list[str]>" beside it
                param.display_type_rich = _no_type  # type: ignore[method-assign]

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not ctx.resilient_parsing and (option := repeated_option(self, ctx, args)):
            takes = "" if option.is_flag else "; it takes one value"
            ctx.fail(f"{option.opts[0]} given twice{takes}")
        return super().parse_args(ctx, args)  # type: ignore[misc, no-any-return]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        fold_long_words_in_help()
        super().format_help(ctx, formatter)  # type: ignore[misc]

    def get_help_option(self, ctx: Any) -> TyperOption | None:
        option: TyperOption | None = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""  # a flag: no "<bool>"
        return option


class RelayCommand(_RelayParsing, TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_the_values()


class RelayGroup(_RelayParsing, TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_the_values()


class RelayTyper(typer.Typer):
    """A ``typer.Typer`` whose groups and commands are RelayGroup and RelayCommand."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=RelayGroup, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        kwargs.setdefault("cls", RelayCommand)
        return super().command(*args, **kwargs)


def _fold_long_words(original: Callable[..., Columns]) -> Callable[..., Columns]:
    from rich.text import Text

    def parameter_help(*args: Any, **kwargs: Any) -> Columns:
        help_columns = original(*args, **kwargs)
        for item in help_columns.renderables:
            if isinstance(item, Text):
                item.overflow = "fold"  # wrap a word longer than the column, never "…"
        return help_columns

    return parameter_help


def fold_long_words_in_help() -> None:
    """Make typer's help wrap long words instead of cutting them, once, when help is
    first shown: rich (about a third of the command's import time) is imported only
    for help, never by a relay that just starts.

    typer builds each option's help cell in a private function, with rich's default
    overflow, which ends a word wider than the column in "…" (docs/architecture.md,
    "Reliance on private APIs"). Without it, help only cuts long words again:
    tests/unit/test_private_apis.py says so when a typer upgrade renames it.
    """
    from typer import rich_utils

    original = getattr(rich_utils, "_get_parameter_help", None)
    if original is None or hasattr(original, "__wrapped_by_relay__"):
        return
    parameter_help = _fold_long_words(original)
    parameter_help.__wrapped_by_relay__ = True  # type: ignore[attr-defined]
    rich_utils._get_parameter_help = parameter_help
