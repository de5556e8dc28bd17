"""Helpers for tests that write reply templates."""

from __future__ import annotations

import os
from pathlib import Path


def write(directory: Path, name: str, text: str) -> Path:
    """Write a template file and push its mtime forward, so even a same-second edit is seen."""
    path = directory / name
    stamp = path.stat().st_mtime_ns + 2_000_000_000 if path.exists() else None
    path.write_text(text, encoding="utf-8")
    if stamp is not None:
        os.utime(path, ns=(stamp, stamp))
    return path
