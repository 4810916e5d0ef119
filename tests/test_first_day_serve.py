"""``make run PORT=…`` as a newcomer meets it (issue 26): `cds-service serve --dev --port P` prints its pages
and says DEV MODE once; the README's tour commands, run unmodified by bash with ``PORT=P``, get the cards the
README promises, with links to this port; sent again, the answer names what was held back."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import requests

from tests.support import ROOT, config_copy, start_service

pytestmark = pytest.mark.slow  # a real service and subprocesses

README = (ROOT / "README.md").read_text(encoding="utf-8")


def tour_commands() -> str:
    """The shell block of the README's "1. Call it as an EHR does"."""
    section = README.split("### 1. Call it as an EHR does", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.DOTALL)[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    config = config_copy(tmp_path_factory.mktemp("first-day-serve"))  # public_base_url: 127.0.0.1:8080
    with start_service(config, workers=2, dev=True) as server:
        yield server


def run_tour(port: int) -> str:
    run = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", tour_commands()],
        cwd=ROOT,
        env={**os.environ, "PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_serve_dev_prints_its_pages_and_says_dev_mode_once(service):
    base = service.base
    for _ in range(6):  # both workers up and answering
        requests.get(f"{base}/healthz", headers={"Connection": "close"}, timeout=10)
    for page in ("sandbox", "admin", "docs"):
        assert f"  {page:<8} {base}/{page}" in service.lines
    dev_mode = [line for line in service.lines if "DEV MODE" in line]
    assert len(dev_mode) == 1, dev_mode
    assert "dev-admin-token" in dev_mode[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's commands use curl")
def test_the_readmes_tour_works_unmodified_on_another_port(service):
    port = int(service.base.rsplit(":", 1)[1])
    assert port != 8080
    first = run_tour(port)
    assert '"summary": "Teratogen active in pregnancy: mycophenolate' in first
    assert f'"url": "{service.base}/docs"' in first  # cards' source.url follows the port
    assert "http://127.0.0.1:8080" not in first
    assert '{"stored":1}' in first
    assert "org.example.tacrolimus-cds.held-back" in first  # order-sign's info findings, just shown
    assert "already shown at patient-view" not in first
    again = run_tour(port)  # the chart opened again within 24 hours: N4 held back, and the answer says why
    assert '"id": "N4"' in again and "already shown at patient-view for this patient" in again


def test_the_admin_page_names_this_port(service):
    admin = requests.get(
        f"{service.base}/admin", headers={"Authorization": "Bearer dev-admin-token"}, timeout=10
    ).text
    assert f"{service.base}" in admin and "127.0.0.1:8080" not in admin


def test_python_dash_m_outside_the_environment_says_how_to_set_it_up():
    """A Python without the dependencies (here: without site-packages) gets the set-up commands."""
    run = subprocess.run(
        [sys.executable, "-S", "-m", "cds_service", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "which cds_service needs; it runs in the project's .venv/." in run.stderr
    assert "make run" in run.stderr and ". .venv/bin/activate" in run.stderr
    assert "Traceback" not in run.stderr
