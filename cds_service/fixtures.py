"""Fixture patients from ``fhir_fixtures/``, with their dates moved to today (see its README)."""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

ANCHOR = date(2026, 11, 1)
FIXTURES_DIR = Path(
    os.environ.get("CDS_FIXTURES_DIR") or Path(__file__).resolve().parent.parent / "fhir_fixtures"
)

_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(T.*)?$")


def shift_dates(node: Any, days: int) -> Any:
    """Return a copy of a FHIR JSON tree with every full date/dateTime moved by ``days``."""
    if isinstance(node, dict):
        return {k: shift_dates(v, days) for k, v in node.items()}
    if isinstance(node, list):
        return [shift_dates(v, days) for v in node]
    if isinstance(node, str) and days and (m := _DATE.match(node)):
        try:
            moved = date(int(m[1]), int(m[2]), int(m[3])) + timedelta(days=days)
        except ValueError:
            return node
        return moved.isoformat() + (m[4] or "")
    return node


@cache
def manifest(directory: Path = FIXTURES_DIR) -> dict[str, dict]:
    return json.loads((directory / "manifest.json").read_text())


def load_bundle(name: str, today: date | None = None, directory: Path = FIXTURES_DIR) -> dict:
    """The fixture Bundle ``name`` with its dates moved so that the anchor falls on ``today``."""
    if name not in manifest(directory):
        raise KeyError(f"unknown fixture {name!r}; known: {', '.join(sorted(manifest(directory)))}")
    bundle = json.loads((directory / f"{name}.json").read_text())
    days = ((today or datetime.now().astimezone().date()) - ANCHOR).days
    return shift_dates(bundle, days)
