"""``GET /docs``: the service's own documentation, rendered, so every card's source link leads somewhere real.

The project has no public web site; its documentation is the README (the front door) and the guides in
``docs/`` (plus ``bench/README.md``, the measured numbers), and the service serves them itself
(``cards.source_url`` defaults to ``public_base_url`` + /docs): the README at ``/docs``, ``docs/<name>.md`` at
``/docs/<name>``, ``bench/README.md`` at ``/docs/bench``. The text is that of the source tree when the service
runs from one; an installed service reads the README from its package metadata and the rest from the data
files packaging installs under ``share/tacrolimus-cds/``.

The Markdown is written for reading on a repository host, with relative links between the files
(``docs/testers.md``, ``../README.md``, ``rules.md#drug-recognition``). Rendering rewrites each link to a file
this module serves into the relative URL of its page, and gives every heading the id a repository host gives
it, so the same links work in both places. Raw HTML stays off; the page loads nothing and runs no script.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from functools import cache
from html import escape
from importlib.metadata import PackageNotFoundError, distribution, metadata
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort
from markdown_it import MarkdownIt
from markdown_it.token import Token

from cds_service.config import DOCS_PATH

DISTRIBUTION = "tacrolimus-cds"
SOURCE_ROOT = Path(__file__).resolve().parent.parent
INSTALLED_DATA = ("share", DISTRIBUTION)
"""Where packaging puts ``docs/*.md`` and ``bench/README.md`` (pyproject ``data-files``), under the prefix."""
README = "README.md"
PAGES = {"bench": "bench/README.md"}
"""Pages served from outside ``docs/``, by name; every other name is ``docs/<name>.md``."""
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "pre,code{background:#f4f4f4}pre{padding:.6rem;overflow-x:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.2rem .4rem;vertical-align:top}nav{font-size:.9rem}"
)
INDEX_TITLE = "Tacrolimus CDS service: documentation"
MOUNT = DOCS_PATH.rsplit("/", 1)[1]  # "docs": the index's last path segment, the pages' folder

bp = Blueprint("docs", __name__)


def repo_path(name: str) -> str:
    """The file (relative to the repository root) that the page ``name`` shows; "" is the README."""
    return README if name == "" else PAGES.get(name, f"docs/{name}.md")


def page_name(path: str) -> str | None:
    """The page that shows the repository file ``path``, or None when it is not served."""
    if path == README:
        return ""
    for name, served in PAGES.items():
        if path == served:
            return name
    folder, _, file = path.rpartition("/")
    stem = file.removesuffix(".md")
    return stem if folder == "docs" and file.endswith(".md") and NAME.fullmatch(stem) else None


def _in_source_tree() -> bool:
    return (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / README).is_file()


@cache
def _installed_root() -> Path | None:
    """``<prefix>/share/tacrolimus-cds`` of the installed distribution, found through its list of files."""
    try:
        files = distribution(DISTRIBUTION).files or []
    except PackageNotFoundError:
        return None
    for file in files:
        if file.parts[-4:-1] == (*INSTALLED_DATA, "docs"):
            return Path(str(file.locate())).parent.parent
    return None


def document(path: str) -> str | None:
    """The Markdown of the repository file ``path`` (one that a page shows), or None if it is not here."""
    if _in_source_tree():
        file = SOURCE_ROOT / path
    elif path == README:
        try:
            return metadata(DISTRIBUTION).get_payload() or None  # type: ignore[attr-defined]
        except PackageNotFoundError:
            return None
    elif (root := _installed_root()) is not None:
        file = root / path
    else:
        return None
    return file.read_text(encoding="utf-8") if file.is_file() else None


def slug(text: str) -> str:
    """A heading's id as repository hosts make it: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _plain(inline: Token) -> str:
    return "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))


def heading_ids(tokens: list[Token]) -> Iterator[tuple[Token, str]]:
    """Each heading's opening token with its id; a repeated id gets -1, -2, ... as on a repository host."""
    seen: dict[str, int] = {}
    for opening, inline in pairwise(tokens):
        if opening.type == "heading_open":
            base = slug(_plain(inline))
            count = seen.get(base, 0)
            seen[base] = count + 1
            yield opening, f"{base}-{count}" if count else base


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def anchors(text: str) -> set[str]:
    """The ids the headings of ``text`` get, for checking ``#anchor`` links."""
    return {anchor for _, anchor in heading_ids(_markdown().parse(text))}


def local_links(text: str) -> Iterator[str]:
    """Every link in ``text`` that stays in the repository: relative paths and ``#anchors``."""
    for token in _markdown().parse(text):
        for child in token.children or []:
            href = str(child.attrGet("href") or "")
            if child.type == "link_open" and not urlsplit(href).scheme and not href.startswith("/"):
                yield href


def _page_url(name: str, start: str) -> str:
    """Relative URL of page ``name`` from page ``start``: the index is ``/docs``, the others ``/docs/<name>``,
    so relative URLs keep working when the service sits under a path prefix."""
    target = MOUNT if name == "" else f"{MOUNT}/{name}"
    return target if start == "" else f"../{target}"


def rewrite(href: str, path: str, name: str) -> str:
    """A link of the file ``path`` (served as page ``name``) as the served page needs it."""
    split = urlsplit(href)
    if split.scheme or split.netloc or href.startswith("/") or not split.path:
        return href
    target = page_name(posixpath.normpath(posixpath.join(posixpath.dirname(path), split.path)))
    if target is None:
        return href
    return _page_url(target, name) + (f"#{split.fragment}" if split.fragment else "")


@cache
def render_page(name: str, text: str) -> str:
    """The HTML page of the Markdown ``text`` served as page ``name`` (its links rewritten for that URL)."""
    md = _markdown()
    tokens = md.parse(text)
    for opening, anchor in heading_ids(tokens):
        opening.attrSet("id", anchor)
    path = repo_path(name)
    for token in tokens:
        for child in token.children or []:
            if child.type == "link_open":
                child.attrSet("href", rewrite(str(child.attrGet("href") or ""), path, name))
    title = next((_plain(tokens[i + 1]) for i, t in enumerate(tokens) if t.type == "heading_open"), "")
    nav = "" if name == "" else f'<nav><a href="{_page_url("", name)}">{INDEX_TITLE}</a></nav>'
    body = md.renderer.render(tokens, md.options, {})
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title) or INDEX_TITLE}</title><style>{STYLE}</style></head>"
        f"<body>{nav}{body}</body></html>"
    )


def _serve(name: str) -> Response:
    text = document(repo_path(name))
    if not text:
        abort(404, "documentation not installed" if name == "" else "no such page of the documentation")
    response = Response(render_page(name, text), mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get(DOCS_PATH)
def index() -> Response:
    return _serve("")


@bp.get(f"{DOCS_PATH}/<name>")
def page(name: str) -> Response:
    if not NAME.fullmatch(name):
        abort(404, "no such page of the documentation")
    return _serve(name)
