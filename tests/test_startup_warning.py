"""A production service whose ``public_base_url`` is on loopback says so once at start-up (rules.md § Card
contract): its cards' ``source.url`` and links would point at the EHR user's own machine."""

from __future__ import annotations

import json

import pytest

from cds_service.cli import loopback_base_url_warning
from cds_service.config import load_config
from tests.support import config_copy, start_service

WARNING = "card source.url and links will point at loopback"


@pytest.mark.slow
def test_a_production_start_on_a_loopback_public_base_url_logs_one_warning_line(tmp_path):
    config = config_copy(tmp_path, server={"public_base_url": "http://127.0.0.1:8080"})
    with start_service(config, workers=1) as service:
        lines = [line for line in service.lines if WARNING in line]
    assert len(lines) == 1, service.log_text()
    logged = json.loads(lines[0])
    assert logged["level"] == "warning" and "http://127.0.0.1:8080" in logged["event"]


@pytest.mark.slow
def test_dev_mode_does_not_warn(tmp_path):
    with start_service(config_copy(tmp_path), workers=1, dev=True) as service:
        assert not [line for line in service.lines if WARNING in line]


@pytest.mark.parametrize(
    ("url", "warns"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.9.8.7", True),
        ("http://localhost:8080/cds", True),
        ("http://[::1]:8080", True),
        ("https://cds.example-hospital.org", False),
        ("https://10.1.2.3", False),
    ],
)
def test_which_public_base_urls_are_loopback(tmp_path, url, warns):
    config = load_config(config_copy(tmp_path, server={"public_base_url": url}))
    assert (loopback_base_url_warning(config) is not None) == warns
