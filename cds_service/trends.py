"""Alert burden over time for ``/admin``: per finding and week, cards shown, accepted, overridden.

Counted by ``report.aggregate`` (the same rows and rules as ``feedback report``), one week at a time, so a
finding's weeks add up to what ``feedback report --since`` prints for the same period (summed over the
services that showed it). Only the feedback and shown-findings tables are read: no patient data.
The override rate is overridden / cards shown: how often the card was dismissed when it appeared.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from cds_service.report import FindingStats, aggregate, catalog_order

if TYPE_CHECKING:
    from cds_service.storage import Store

FLAG_RATE = 0.8
"""Default ``admin.override_flag_rate``: findings overridden more often than this are flagged..."""
FLAG_MIN_CARDS = 20
"""...once shown on at least this many cards (default ``admin.override_flag_min_cards``)."""
DEFAULT_WEEKS = 12


@dataclass
class Week:
    start: date
    shown: int = 0
    accepted: int = 0
    overridden: int = 0

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.shown if self.shown else None


@dataclass
class FindingTrend:
    finding: str
    weeks: list[Week]
    reasons: Counter[str] = field(default_factory=Counter)
    displays: dict[str, str] = field(default_factory=dict)
    flagged: bool = False

    @property
    def shown(self) -> int:
        return sum(w.shown for w in self.weeks)

    @property
    def accepted(self) -> int:
        return sum(w.accepted for w in self.weeks)

    @property
    def overridden(self) -> int:
        return sum(w.overridden for w in self.weeks)

    @property
    def override_rate(self) -> float | None:
        return self.overridden / self.shown if self.shown else None

    def to_json(self) -> dict[str, Any]:
        return {
            "finding": self.finding,
            "shown": self.shown,
            "accepted": self.accepted,
            "overridden": self.overridden,
            "override_rate": _rounded(self.override_rate),
            "flagged": self.flagged,
            "weeks": [
                {
                    "start": w.start.isoformat(),
                    "shown": w.shown,
                    "accepted": w.accepted,
                    "overridden": w.overridden,
                    "override_rate": _rounded(w.override_rate),
                }
                for w in self.weeks
            ],
            "reasons": [
                {"code": code, "display": self.displays.get(code, ""), "count": count}
                for code, count in self.reasons.most_common(5)
            ],
        }


def _rounded(rate: float | None) -> float | None:
    return None if rate is None else round(rate, 4)


def week_starts(since: date, until: date) -> list[date]:
    """``since``, then every Monday before ``until`` (exclusive): the first week may be a part week."""
    starts = [since]
    monday = since + timedelta(days=(7 - since.weekday()) % 7 or 7)
    while monday < until:
        starts.append(monday)
        monday += timedelta(days=7)
    return starts


def trends(
    store: Store,
    since: date,
    until: date,
    tenant: str | None = None,
    flag_rate: float = FLAG_RATE,
    flag_min_cards: int = FLAG_MIN_CARDS,
) -> list[FindingTrend]:
    """Per finding shown or answered in [since, until), its weeks, top override reasons and flag."""
    shown_rows, feedback_rows = store.shown_rows(), store.feedback_rows()
    suggestions = store.suggestion_findings()
    starts = week_starts(since, until)
    by_finding: dict[str, FindingTrend] = {}
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else until
        stats = aggregate(
            shown_rows, feedback_rows, since=start, until=end, tenant=tenant, suggestion_findings=suggestions
        )
        for s in stats:
            trend = by_finding.setdefault(s.finding, FindingTrend(s.finding, [Week(w) for w in starts]))
            _add(trend, n, s)
    for trend in by_finding.values():
        rate = trend.override_rate
        trend.flagged = trend.shown >= flag_min_cards and rate is not None and rate > flag_rate
    return sorted(by_finding.values(), key=lambda t: catalog_order(t.finding))


def _add(trend: FindingTrend, week: int, stats: FindingStats) -> None:
    trend.weeks[week].shown += stats.shown
    trend.weeks[week].accepted += stats.accepted
    trend.weeks[week].overridden += stats.overridden
    trend.reasons.update(stats.reasons)
    for code, display in stats.displays.items():
        trend.displays.setdefault(code, display)


def top_reasons(found: Iterable[FindingTrend], count: int = 10) -> list[dict[str, Any]]:
    """The override reasons given most often over every finding."""
    total: Counter[str] = Counter()
    displays: dict[str, str] = {}
    for trend in found:
        total.update(trend.reasons)
        for code, display in trend.displays.items():
            displays.setdefault(code, display)
    return [
        {"code": code, "display": displays.get(code, ""), "count": n} for code, n in total.most_common(count)
    ]
