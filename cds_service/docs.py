"""``GET /docs``: the service's own README, rendered, so every card's source link leads somewhere real.

The project has no public web site; the README is its documentation, and the service serves it itself
(``cards.source_url`` defaults to ``public_base_url`` + /docs). The text is the README of the source tree
when the service runs from one, else the copy that packaging stores in the installed metadata. Markdown is
rendered with raw HTML off; the page loads nothing and runs no script.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

from flask import Blueprint, Response
from markdown_it import MarkdownIt

from cds_service.config import DOCS_PATH

SOURCE_README = Path(__file__).resolve().parent.parent / "README.md"
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "pre,code{background:#f4f4f4}pre{padding:.6rem;overflow-x:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2rem .4rem;vertical-align:top}"
)

bp = Blueprint("docs", __name__)


def readme_text() -> str:
    if SOURCE_README.is_file():
        return SOURCE_README.read_text(encoding="utf-8")
    try:
        return metadata("tacrolimus-cds").get_payload() or ""  # type: ignore[attr-defined]
    except PackageNotFoundError:
        return ""


@cache
def _page(text: str) -> str:
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Tacrolimus CDS service: documentation</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


@bp.get(DOCS_PATH)
def docs() -> Response | tuple[str, int]:
    text = readme_text()
    if not text:
        return "documentation not installed", 404
    response = Response(_page(text), mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
