"""A plain HTTP GET for the relay's metrics and health endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """(status, body); status 0 when nothing listens (yet)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:
        return 0, ""
