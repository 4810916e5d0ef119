"""Each finding id in words, as its declaration names it: what the admin page, reports and tools show."""

from __future__ import annotations

from cds_service.rules import REGISTRY


def finding_title(finding_id: str) -> str:
    """The finding in words (a retired id its old title); an unknown id (e.g. ``?``) gets ``""``."""
    return REGISTRY.title(finding_id)
