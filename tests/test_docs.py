"""The documentation: a README that is a front door, guides whose links work both on a repository host and as
the service serves them at /docs, and an installed service (no source tree) that serves them too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from cds_service.docs import anchors, local_links, render_page
from tests.support import ROOT, make_app

README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
FILES = [README, *GUIDES, ROOT / "bench" / "README.md"]
URLS = ["/docs", *(f"/docs/{guide.stem}" for guide in GUIDES), "/docs/bench"]


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_readme_is_a_front_door_that_leads_to_every_guide():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    set_up = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^make (\w+) ", set_up, re.MULTILINE) == ["run", "test"]
    linked = {href.partition("#")[0] for href in local_links(text)}
    assert {_name(guide) for guide in GUIDES} | {"bench/README.md"} <= linked


@pytest.mark.parametrize("path", FILES, ids=_name)
def test_every_relative_link_and_anchor_resolves_in_the_repository(path):
    """As a repository host shows the files: the linked file exists and the anchor is one of its headings."""
    broken = []
    for href in local_links(path.read_text(encoding="utf-8")):
        target, _, anchor = href.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.is_file() or (anchor and anchor not in anchors(file.read_text(encoding="utf-8"))):
            broken.append(href)
    assert broken == []


@pytest.mark.parametrize(
    ("heading", "github_id"),
    [
        (
            "Tacrolimus for lupus nephritis: a CDS Hooks 2.0 service",
            "tacrolimus-for-lupus-nephritis-a-cds-hooks-20-service",
        ),
        ("Metrics (`GET /metrics`, Prometheus text)", "metrics-get-metrics-prometheus-text"),
        ("Not shown twice (order-select → order-sign)", "not-shown-twice-order-select--order-sign"),
        ("Hostile input, slow servers (issue 12)", "hostile-input-slow-servers-issue-12"),
    ],
)
def test_headings_get_the_ids_a_repository_host_gives_them(heading, github_id):
    assert anchors(f"## {heading}\n") == {github_id}
    assert anchors(f"## {heading}\n\n### {heading}\n") == {github_id, f"{github_id}-1"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("docs"), dev=False).test_client()


@pytest.mark.parametrize("url", URLS)
def test_every_link_of_a_served_page_leads_to_a_served_page_and_heading(client, url):
    page = client.get(url)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none': no script
    broken = []
    for href in re.findall(r'<a href="([^"]*)"', page.get_data(as_text=True)):
        if urlsplit(href).scheme:
            continue  # another site
        target = urlsplit(urljoin(f"http://cds.example.org{url}", href))
        answer = client.get(target.path)
        heading = f'id="{target.fragment}"'
        if answer.status_code != 200 or (target.fragment and heading not in answer.get_data(as_text=True)):
            broken.append(href)
    assert broken == []


def test_links_stay_relative_so_a_path_prefix_keeps_working(client):
    html = client.get("/docs/integration").get_data(as_text=True)
    assert 'href="../docs/testers"' in html and 'href="../docs#a-five-minute-tour"' in html
    assert 'href="/' not in html


@pytest.mark.parametrize("url", ["/docs/nothing-here", "/docs/README", "/docs/..%2Fpyproject.toml", "/docs/"])
def test_an_unknown_page_is_404(client, url):
    assert client.get(url).status_code == 404


def test_raw_html_in_the_markdown_stays_text():
    html = render_page("x", "# T\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) <b>bold</b>\n")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>" not in html and 'href="javascript' not in html


def _dockerfile_copies_before_install() -> list[tuple[list[str], str]]:
    copies = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("RUN pip install"):
            return copies
        if line.startswith("COPY "):
            *sources, destination = [word for word in line.split()[1:] if not word.startswith("--")]
            copies.append((sources, destination))
    raise AssertionError("the Dockerfile installs nothing")


@pytest.mark.slow
def test_an_installed_service_serves_every_page_without_the_source_tree(tmp_path):
    """Built from what the Dockerfile copies before its `pip install`, installed elsewhere, run from there."""
    source = tmp_path / "src"
    for sources, destination in _dockerfile_copies_before_install():
        for item in sources:
            target = (
                source / destination / Path(item).name if destination.endswith("/") else source / destination
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / item).is_dir():
                shutil.copytree(ROOT / item, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / item, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", tmp_path / "wheel", source], check=True, timeout=300)
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    prefix = tmp_path / "prefix"
    # --ignore-installed: never uninstall the copy this test suite runs from
    install = [*pip, "install", "--no-deps", "--ignore-installed", "--prefix", prefix, wheel]
    subprocess.run(install, check=True, timeout=300)
    site = Path(sysconfig.get_path("purelib", vars={"base": prefix, "platbase": prefix}))
    script = textwrap.dedent(f"""
        import json, flask, cds_service.docs as docs
        app = flask.Flask("installed")
        app.register_blueprint(docs.bp)
        client = app.test_client()
        pages = {{url: client.get(url) for url in {URLS!r}}}
        print(json.dumps({{"module": docs.__file__, "status": {{u: p.status_code for u, p in pages.items()}},
                           "readme": "A five-minute tour" in pages["/docs"].get_data(as_text=True)}}))
    """)
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr
    served = json.loads(run.stdout)
    assert Path(served["module"]).is_relative_to(site)
    assert served["status"] == {url: 200 for url in URLS} and served["readme"]


def _settings(schema: dict, defs: dict, depth: int = 0) -> set[str]:
    """Every setting a configuration schema names, two levels deep (e.g. ``thresholds.hba1c``)."""
    found = set()
    for key, node in schema.get("properties", {}).items():
        found.add(key)
        node = defs.get(node.get("$ref", "").rpartition("/")[2], node)
        node = node.get("items", node)
        if depth == 0:
            found |= _settings(node, defs, depth + 1)
    return found


def test_the_configuration_reference_names_every_setting():
    schemas = ROOT / "cds_service" / "schemas" / "config"
    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(?:\w+\.)?(\w+)`", reference))
    for file in ("settings.json", "service.json"):
        schema = json.loads((schemas / file).read_text())
        assert _settings(schema, schema.get("$defs", {})) - named == set(), file
