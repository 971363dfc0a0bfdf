"""A stand-in that counts the calls it passes on (test code only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Counted:
    """Calls ``target`` with whatever it is called with, counting the calls."""

    def __init__(self, target: Callable[..., Any]) -> None:
        self.target = target
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.target(*args, **kwargs)
