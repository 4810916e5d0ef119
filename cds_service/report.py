"""Feedback statistics: per service and finding id, how often cards were shown, accepted and overridden.

Pure functions over the rows of ``storage`` (``shown_findings`` and ``feedback``), so the command line and the
admin page count the same way. Feedback names a card by its uuid; the findings on that card come from the
``shown_findings`` rows of the same service with that uuid. An accepted suggestion counts for the finding that
suggestion answers (``shown_suggestions``); an override, or an answer naming no known suggestion, counts once
for every finding on the card. The accept rate is accepted / (accepted + overridden): cards nobody answered
are in neither. Override reasons are counted by code and shown with their stored display.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from cds_service.card_text import clean
from cds_service.rules import REGISTRY

if TYPE_CHECKING:
    from cds_service.storage import Store

UNKNOWN_CARD = "?"
"""Finding id for feedback on a card uuid this service never recorded as shown (e.g. before the database)."""

COLUMNS = (
    "service",
    "finding",
    "shown",
    "accepted",
    "overridden",
    "accept_rate",
    "override_reasons",
    "override_reason_displays",
)


@dataclass
class FindingStats:
    service: str
    finding: str
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    """Override reason code → count; ``(none given)`` when the clinician gave no reason."""
    displays: dict[str, str] = field(default_factory=dict)
    """Override reason code → its display, as stored with the feedback."""

    @property
    def answered(self) -> int:
        return self.accepted + self.overridden

    @property
    def accept_rate(self) -> float | None:
        return self.accepted / self.answered if self.answered else None

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "finding": self.finding,
            "shown": self.shown,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "accept_rate": None if self.accept_rate is None else round(self.accept_rate, 4),
            "override_reasons": dict(self.reasons.most_common()),
            "override_reason_displays": {
                c: self.displays[c] for c, _ in self.reasons.most_common() if c in self.displays
            },
        }


_POSITION = {finding_id: n for n, finding_id in enumerate(REGISTRY)}


def catalog_order(finding_id: str) -> tuple[int, str]:
    """The registry's (catalog) order, then anything else by id (retired ids of old rows, ``?``)."""
    return (_POSITION.get(finding_id, len(_POSITION)), finding_id)


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were stored in UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def since_moment(day: date | datetime | None) -> datetime | None:
    """The start (UTC) of ``day``; a datetime is taken as is."""
    if day is None or isinstance(day, datetime):
        return _utc(day)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def store_statistics(
    store: Store,
    since: date | datetime | None = None,
    tenant: str | None = None,
    until: date | datetime | None = None,
) -> list[FindingStats]:
    """``aggregate`` over everything ``store`` holds: what ``/admin`` and ``feedback report`` show."""
    return aggregate(
        store.shown_rows(),
        store.feedback_rows(),
        since=since,
        tenant=tenant,
        suggestion_findings=store.suggestion_findings(),
        until=until,
    )


def aggregate(
    shown_rows: Iterable[Mapping[str, Any]],
    feedback_rows: Iterable[Mapping[str, Any]],
    since: date | datetime | None = None,
    tenant: str | None = None,
    suggestion_findings: Mapping[tuple[str, str], set[str]] | None = None,
    until: date | datetime | None = None,
) -> list[FindingStats]:
    """Statistics per (service, finding), in service then catalog order; ``until`` (exclusive) ends the
    period.

    ``suggestion_findings``: (service, suggestion uuid) → the findings it answers (from the Store).

    ``shown_rows`` should be every row (not only those since ``since``): an answer received in the window
    about a card shown before it still needs the card's findings.
    """
    start, end = since_moment(since), since_moment(until)
    shown_rows = list(shown_rows)
    findings_on_card: dict[tuple[str, str], set[str]] = {}
    for row in shown_rows:
        findings_on_card.setdefault((row["service_id"], row["card_uuid"]), set()).add(row["finding_id"])

    stats: dict[tuple[str, str], FindingStats] = {}

    def entry(service: str, finding: str) -> FindingStats:
        return stats.setdefault((service, finding), FindingStats(service, finding))

    def counted(row: Mapping[str, Any], moment_key: str) -> bool:
        if tenant is not None and row.get("tenant") != tenant:
            return False
        moment = _utc(row[moment_key])
        if moment is None:
            return start is None and end is None
        return (start is None or moment >= start) and (end is None or moment < end)

    for row in shown_rows:
        if counted(row, "shown_at"):
            entry(row["service_id"], row["finding_id"]).shown += 1
    for row in feedback_rows:
        if not counted(row, "received_at"):
            continue
        findings = findings_on_card.get((row["service_id"], row["card_uuid"])) or {UNKNOWN_CARD}
        if row["outcome"] == "accepted":
            answered = set().union(
                *(
                    (suggestion_findings or {}).get((row["service_id"], str(uuid)), set())
                    for uuid in row.get("accepted_suggestions") or ()
                )
            )
            findings = answered or findings
        for finding in findings:
            item = entry(row["service_id"], finding)
            if row["outcome"] == "accepted":
                item.accepted += 1
            elif row["outcome"] == "overridden":
                item.overridden += 1
                # the caller's text: no control or bidi character reaches a terminal or a spreadsheet
                code = clean(row.get("override_code") or "") or "(none given)"
                item.reasons[code] += 1
                if row.get("override_display"):
                    item.displays.setdefault(code, clean(row["override_display"]))
    return sorted(stats.values(), key=lambda s: (s.service, catalog_order(s.finding)))


def rate_text(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def reasons_text(
    reasons: Counter[str], separator: str = ", ", displays: Mapping[str, str] | None = None
) -> str:
    """``risk-benefit-ratio (Recipient assessment of risk/benefit ratio) 2, (none given) 1``."""
    shown = displays or {}
    return separator.join(
        f"{code} ({shown[code]}) {count}" if code in shown else f"{code} {count}"
        for code, count in reasons.most_common()
    )


def as_table(stats: list[FindingStats]) -> str:
    """Aligned columns for a terminal."""
    if not stats:
        return "no cards shown and no feedback received in this period"
    header = ("service", "finding", "shown", "accepted", "overridden", "accept rate", "override reasons")
    rows = [
        (
            s.service,
            s.finding,
            str(s.shown),
            str(s.accepted),
            str(s.overridden),
            rate_text(s.accept_rate),
            reasons_text(s.reasons, displays=s.displays),
        )
        for s in stats
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3, 4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    lines.append("accept rate = accepted / (accepted + overridden); '?' = feedback on a card never recorded")
    return "\n".join(lines)


def as_csv(stats: list[FindingStats]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in stats:
        rate = "" if s.accept_rate is None else f"{s.accept_rate:.4f}"
        reasons = ";".join(f"{code}={count}" for code, count in s.reasons.most_common())
        displays = ";".join(
            f"{code}={s.displays[code]}" for code, _ in s.reasons.most_common() if code in s.displays
        )
        writer.writerow((s.service, s.finding, s.shown, s.accepted, s.overridden, rate, reasons, displays))
    return out.getvalue()


def as_json(stats: list[FindingStats]) -> str:
    return json.dumps([s.to_json() for s in stats], indent=2)


FORMATS = {"table": as_table, "csv": as_csv, "json": as_json}
