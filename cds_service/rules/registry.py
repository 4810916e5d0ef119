"""How a finding is declared: once, in its family module, with everything the rest of the service needs.

A ``Declaration`` names the rule function and what surrounds it: the card topic, the indicators it can
fire at, its title, the settings it reads (with their JSON Schema), its citations, which kinds of service
run it and what it reads from the record. Titles, ``explain``, the settings schema, feedback reports,
``/admin``, the course app and every service's prefetch templates are derived from these declarations
(``cds_service.rules.REGISTRY``), so adding a finding means adding its declaration, its value sets, its
tests and an INTERPRETATIONS line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cds_service.rules.model import INDICATOR_RANK, TOPICS, Finding, Quiet, RuleInput

Rule = Callable[[RuleInput], Finding | Quiet]

ORDER = "order"
"""The tacrolimus order services (order-select, order-sign): a draft tacrolimus order is "the order"."""
MONITORING = "monitoring"
"""The monitoring service: the chart of a patient already on tacrolimus is opened (continuing therapy)."""
CO_PRESCRIBING = "co-prescribing"
"""The co-prescribing services (rule catalog version 3): another drug is drafted for a patient on it."""
SERVICE_KINDS = (ORDER, MONITORING, CO_PRESCRIBING)

ANCHOR_DRUG = "tacrolimus"
"""The drug every finding is about; the course app highlights it for a finding only if ``course`` names it."""

EVERY_TACROLIMUS_SERVICE = frozenset({ORDER, MONITORING})
NEW_START_ONLY = frozenset({ORDER})
WITH_OTHER_PRESCRIBER = frozenset({ORDER, MONITORING, CO_PRESCRIBING})
"""Findings the co-prescribing services run too (rules.md v3 § The other prescriber): each needs a
``Wording.co_prescribing`` (``rules.other_prescriber``)."""


@dataclass(frozen=True)
class Setting:
    """One administrator setting (``thresholds.<name>`` in ``hooks/settings.yaml``, where its default is).

    ``schema`` is the JSON Schema of its value; the configuration check is generated from it.
    """

    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class Wording:
    """Wording variants of a finding, by the situation it is shown in (None: the rule's own text serves).

    The rule bodies choose between new start and continuing therapy today; ``co_prescribing`` is the text for
    the clinician who drafts the other drug (rule catalog version 3, § The other prescriber).
    """

    new_start: str | None = None
    continuing: str | None = None
    co_prescribing: str | None = None


@dataclass(frozen=True)
class Declaration:
    """One finding of the rule catalog, declared once in its family module."""

    id: str
    rule: Rule
    family: str
    topic: str
    indicators: tuple[str, ...]
    """The indicators it can fire at, the catalog's default first (N7 is tiered)."""
    title: str
    """The finding in words (≤ 50 characters): what ``/admin``, reports and tools call it."""
    settings: tuple[Setting, ...] = ()
    """The thresholds it reads, in the order ``explain`` shows them."""
    citations: tuple[str, ...] = ()
    """Keys of ``cds_service.rules.citations.CITATIONS`` its cards may cite."""
    runs_in: frozenset[str] = EVERY_TACROLIMUS_SERVICE
    """Kinds of service that run it (``ORDER``, ``MONITORING``, ``CO_PRESCRIBING``)."""
    needs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """What it reads: resource type → value-set names. The prefetch templates are derived from it."""
    course: tuple[str, ...] = ()
    """The lab groups (and drug classes beyond ``drugs``) the course app highlights when the finding is on a
    card."""
    wording: Wording = Wording()
    replaces: Mapping[str, str] = field(default_factory=dict)
    """Retired ids this finding took the place of → their old title (refused in configuration, named in
    reports of old feedback)."""

    def __post_init__(self) -> None:
        if self.topic not in TOPICS:
            raise ValueError(f"{self.id}: unknown card topic {self.topic!r}")
        if not self.indicators or not set(self.indicators) <= set(INDICATOR_RANK):
            raise ValueError(f"{self.id}: indicators must be among {', '.join(INDICATOR_RANK)}")
        if not self.runs_in <= set(SERVICE_KINDS):
            raise ValueError(f"{self.id}: runs_in must be among {', '.join(SERVICE_KINDS)}")
        if len(self.title) > 50:
            raise ValueError(f"{self.id}: title longer than 50 characters")

    @property
    def indicator(self) -> str:
        """The catalog's default indicator."""
        return self.indicators[0]

    @property
    def drugs(self) -> tuple[str, ...]:
        """The drug classes the finding reads, tacrolimus aside (every finding reads it): what the course app
        draws and highlights for it, with the groups ``course`` names. Derived from ``needs``, so the chart
        cannot drift from what the rule looks at."""
        return tuple(g for g in self.needs.get("MedicationRequest", ()) if g != ANCHOR_DRUG)


@dataclass(frozen=True)
class Family:
    """A family of findings: one module, one card topic."""

    name: str
    topic: str

    def declare(
        self, finding_id: str, rule: Rule, indicators: tuple[str, ...], title: str, **more: Any
    ) -> Declaration:
        return Declaration(finding_id, rule, self.name, self.topic, indicators, title, **more)


def setting(
    name: str, kind: str, low: float | None = None, high: float | None = None, about: str = ""
) -> Setting:
    """A numeric or boolean setting: ``kind`` is ``integer``, ``number`` or ``boolean``."""
    schema: dict[str, Any] = {"type": kind}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    if about:
        schema["description"] = about
    return Setting(name, MappingProxyType(schema))


def choice_setting(name: str, options: tuple[str, ...], about: str) -> Setting:
    """A setting that is one of a few words (e.g. an indicator)."""
    return Setting(name, MappingProxyType({"enum": list(options), "description": about}))


def pair_setting(name: str, kind: str, low: float, high: float, about: str) -> Setting:
    """A setting of exactly two values, e.g. ``[systolic, diastolic]`` or ``[from, to]``."""
    schema = {
        "type": "array",
        "items": {"type": kind, "minimum": low, "maximum": high},
        "minItems": 2,
        "maxItems": 2,
        "description": about,
    }
    return Setting(name, MappingProxyType(schema))


class Registry(Mapping[str, Declaration]):
    """Every declared finding by id, in catalog order, with what is derived from the declarations."""

    def __init__(self, declarations: Iterable[Declaration]):
        self._by_id: dict[str, Declaration] = {}
        for declaration in declarations:
            if declaration.id in self._by_id:
                raise ValueError(f"finding {declaration.id} is declared twice")
            self._by_id[declaration.id] = declaration
        self.retired: dict[str, str] = {old: d.id for d in self._by_id.values() for old in d.replaces}
        """Retired ids → the id that took their place."""
        self.settings: dict[str, Setting] = {}
        """Every setting a finding reads, by name (one schema per name)."""
        for declaration in self._by_id.values():
            for item in declaration.settings:
                known = self.settings.setdefault(item.name, item)
                if known.schema != item.schema:
                    raise ValueError(f"setting {item.name} is declared with two schemas ({declaration.id})")

    def __getitem__(self, finding_id: str) -> Declaration:
        return self._by_id[finding_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def families(self) -> dict[str, tuple[str, ...]]:
        """Family → its finding ids, in catalog order."""
        out: dict[str, list[str]] = {}
        for d in self._by_id.values():
            out.setdefault(d.family, []).append(d.id)
        return {family: tuple(ids) for family, ids in out.items()}

    def run_by(self, kind: str) -> tuple[str, ...]:
        """The findings a kind of service runs, in catalog order."""
        return tuple(d.id for d in self._by_id.values() if kind in d.runs_in)

    def title(self, finding_id: str) -> str:
        """The finding in words; a retired id its old title; an unknown id (``?``) gets ``""``."""
        if finding_id in self._by_id:
            return self._by_id[finding_id].title
        if finding_id in self.retired:
            return self._by_id[self.retired[finding_id]].replaces[finding_id]
        return ""

    def settings_read_by(self, finding_id: str) -> tuple[str, ...]:
        return tuple(s.name for s in self._by_id[finding_id].settings)

    def readers_of(self, setting_name: str) -> list[str]:
        """The findings that read one setting, in catalog order."""
        return [d.id for d in self._by_id.values() if any(s.name == setting_name for s in d.settings)]

    def id_ranges(self) -> str:
        """The ids in words, runs of one letter collapsed: ``P1-P7, S0-S4, S7, N1-N15``."""
        runs: list[list[str]] = []
        for finding_id in self._by_id:
            last = runs[-1][-1] if runs else ""
            same_letter = last[:1] == finding_id[:1]
            if runs and same_letter and last[1:].isdigit() and int(finding_id[1:]) == int(last[1:]) + 1:
                runs[-1].append(finding_id)
            else:
                runs.append([finding_id])
        return ", ".join(r[0] if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
