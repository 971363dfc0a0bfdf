"""Generated tables in a docs page: the lines between a pair of marker comments."""

from __future__ import annotations

from pathlib import Path


def fill_between(path: Path, begin: str, end: str, lines: list[str]) -> None:
    """Replace what stands between ``begin`` and ``end`` in ``path`` with ``lines``."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} lines to fill")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text("\n".join([head + begin, *lines, end]) + tail)
