"""A reload reaches every instance: two real ``cds-service serve`` instances on one database (a shared SQLite
file, and PostgreSQL), each with its own copy of the configuration files, as two pods each mount the
ConfigMap.

A reload on one instance (``POST /admin/reload``, or SIGHUP) is announced in the database; the other instance
takes the new files up within seconds, or waits, saying so on ``/admin``, while its own files still hold the
old ones (a ConfigMap reaches a pod's volume late), and takes them up as soon as they arrive.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from tests.support import config_copy, start_service

pytestmark = pytest.mark.slow  # and postgres, from its fixture
TOKEN = "a-long-admin-token-for-the-reload-test"
ADMIN = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
SERVICE = "tacrolimus-order-sign"


def retitle(config: Path, title: str) -> None:
    """What an operator changes in the ConfigMap: the order-sign service's title (shown in discovery)."""
    path = config / "services" / f"{SERVICE}.yaml"
    lines = path.read_text().splitlines()
    lines = [f"title: {title}" if line.startswith("title:") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")


def title_on(instance) -> str:
    """The order-sign service's title on the instance's /admin page (whichever worker answers)."""
    page = requests.get(f"{instance.base}/admin", headers={**ADMIN, "Accept": "text/html"}, timeout=5).text
    found = re.search(rf"<td[^>]*><code>{SERVICE}</code></td><td[^>]*>[^<]*</td><td[^>]*>([^<]*)</td>", page)
    assert found, page[:2000]
    return found.group(1)


def replicas(instance) -> dict:
    answer = requests.get(f"{instance.base}/admin/instances", headers=ADMIN, timeout=5)
    assert answer.status_code == 200, answer.text + instance.log_text()[-3000:]
    return answer.json()


def serving(instance) -> list[dict]:
    return [row for row in replicas(instance)["instances"] if row["serving"]]


def test_a_reload_on_one_instance_reaches_the_other(tmp_path, each_database):
    """``each_database``: a shared SQLite file, then PostgreSQL (CDS_DATABASE_URL wins over the files)."""
    shared_sqlite = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    admin = {"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}

    def config(name: str) -> Path:
        return config_copy(tmp_path / name, feedback={"database_url": shared_sqlite}, admin=admin)

    with ExitStack() as stack:
        a_dir, b_dir = config("a"), config("b")
        a = stack.enter_context(start_service(a_dir, workers=2))
        b = stack.enter_context(start_service(b_dir, workers=1))
        for here, there in ((a_dir, b_dir), (b_dir, a_dir)):  # each instance's probe service in both copies
            for marker in (here / "services").glob("zz-probe-*.yaml"):
                shutil.copy(marker, there / "services" / marker.name)
        # every worker of both instances reports what it serves
        a.wait_until(lambda: len(serving(a)) == 3, "three serving processes", timeout=60)
        assert {row["instance"].split(":")[0] for row in serving(a)} == {os.uname().nodename}

        # the ConfigMap is updated, but has reached only A's files; the administrator reloads A
        retitle(a_dir, "Order check v2")
        reloaded = requests.post(f"{a.base}/admin/reload", headers=ADMIN, timeout=10)
        assert reloaded.status_code == 202, reloaded.text
        version = reloaded.json()["version"]
        a.wait_until(lambda: title_on(a) == "Order check v2", "A on the new files", timeout=60)
        a.wait_until(lambda: replicas(a)["announced"]["version"] == version, "the announcement", timeout=60)
        waiting = b.wait_until(
            lambda: [r for r in serving(b) if r["version"] != version and r["state"].startswith("waiting")],
            "B saying it waits for its files",
            timeout=60,
        )
        assert version in waiting[0]["state"]
        assert title_on(b) != "Order check v2"

        # the files reach B: it follows without a reload of its own
        retitle(b_dir, "Order check v2")
        b.wait_until(lambda: title_on(b) == "Order check v2", "B following the announcement", timeout=60)
        a.wait_until(
            lambda: {r["version"] for r in serving(a)} == {version} and len(serving(a)) >= 3,
            "every process on the announced version",
            timeout=60,
        )
        page = requests.get(f"{a.base}/admin", headers={**ADMIN, "Accept": "text/html"}, timeout=5).text
        assert f'id="this-version">{version}<' in page and page.count(f'data-version="{version}"') >= 3

        # SIGHUP to B's master (files updated on both): A follows too
        retitle(a_dir, "Order check v3")
        retitle(b_dir, "Order check v3")
        os.kill(b.process.pid, signal.SIGHUP)
        b.wait_until(lambda: title_on(b) == "Order check v3", "B reloaded by SIGHUP", timeout=60)
        news = lambda: replicas(b)["announced"]  # noqa: E731
        third = b.wait_until(lambda: news()["version"] != version and news())
        a.wait_until(
            lambda: {r["version"] for r in serving(a)} == {third["version"]},
            "every process of both instances on B's version",
            timeout=60,
        )
        for _ in range(6):  # every worker of A, whichever answers
            assert title_on(a) == "Order check v3"

        # a bad file on A is refused there, and named on /admin; A keeps serving the last good configuration
        retitle(b_dir, "Order check v4")
        (a_dir / "settings.yaml").write_text((a_dir / "settings.yaml").read_text() + "\nnot yaml: [\n")
        os.kill(b.process.pid, signal.SIGHUP)
        refused = a.wait_until(
            lambda: [r for r in serving(a) if r["state"].startswith("not following")],
            "A refusing its bad files",
            timeout=60,
        )
        assert "settings.yaml" in refused[0]["state"]
        assert title_on(a) == "Order check v3"
