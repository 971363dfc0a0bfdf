"""Durations on the command line: ``15``, ``1.5s``, ``500ms``, ``10m``, ``1h``, ``7d``."""

from __future__ import annotations

import re

from relay.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str, what: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(
            f"the {what} {text!r} is not a duration; write seconds (15) or a number "
            "with a unit: 500ms, 15s, 10m, 1h, 7d"
        )
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
