"""Prometheus metrics (``GET /metrics``), all named ``cds_…``; no label carries patient data.

Under a multi-process server every worker counts in its own files in ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` sums them, so any worker answers for the whole instance. ``cds-service serve`` creates that
folder (empty) before the workers start and removes it at exit; prometheus-client decides the mode when it
is first imported, so the variable must be set before this module is. Without it (tests, a single process) the
metrics live in this process.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Counter_
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from cds_service.metrics_folder import MULTIPROC_ENV

disable_created_metrics()  # the *_created series only add noise to every counter

MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))
"""Decided once, at import, as prometheus-client decides where values live."""
STAGES = ("parse", "gather", "record", "rules", "cards")

HOOK_CALLS = Counter(
    "cds_hook_calls", "Hook calls answered, by service and HTTP status.", ["service", "status"]
)
STAGE_SECONDS = Histogram(
    "cds_stage_seconds",
    "Time spent in each stage of a hook call (parse, gather, record, rules, cards).",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FHIR_REQUESTS = Counter(
    "cds_fhir_requests",
    "FHIR callbacks by outcome: ok, not_found, timeout, http_error, connection, too_large, invalid, refused.",
    ["outcome"],
)
FINDINGS_SHOWN = Counter(
    "cds_findings_shown",
    "Findings shown on cards, by service, finding id and indicator.",
    ["service", "finding", "indicator"],
)
FEEDBACK = Counter(
    "cds_feedback",
    "Feedback items stored, by service, the finding on the card (unknown if not ours) and outcome.",
    ["service", "finding", "outcome"],
)
DB_ERRORS = Counter("cds_db_errors", "Database operations that failed, by operation.", ["operation"])
SHOWN_ROWS_LOST = Counter(
    "cds_shown_rows_lost", "Shown-findings rows that could not be stored (the database failed)."
)


def count_shown(rows: Iterable[Mapping[str, str]]) -> None:
    """``cds_findings_shown_total`` for the rows of one call (one increment per distinct label set)."""
    counts = Counter_((row["service_id"], row["finding_id"], row["indicator"]) for row in rows)
    for (service, finding, indicator), count in counts.items():
        FINDINGS_SHOWN.labels(service=service, finding=finding, indicator=indicator).inc(count)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one stage of a hook call into ``cds_stage_seconds``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage=name).observe(time.perf_counter() - started)


def fhir_outcome(reason: str) -> str:
    """A small, fixed label set for a FhirError's reason (the reason itself may name URLs)."""
    for outcome, marks in (
        ("timeout", ("timed out", "deadline")),
        ("too_large", ("larger than", "pages")),
        ("connection", ("connection",)),
        ("http_error", ("HTTP",)),
        ("refused", ("off the FHIR server", "refused")),
    ):
        if any(mark in reason for mark in marks):
            return outcome
    return "invalid"


def exposition() -> tuple[bytes, str]:
    """The metrics page: this process's metrics, or every worker's summed in multi-process mode."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class Laps:
    """Stage timings of one hook call: ``lap(stage)`` records the time since the previous lap."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        STAGE_SECONDS.labels(stage=name).observe(now - self._last)
        self._last = now
