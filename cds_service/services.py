"""One declaration per CDS service: its hook, how it finds what it speaks about, what it gathers, which
findings it runs and what it remembers (rules.md § When the service speaks at all: the services).

``hook_call.answer_hook`` walks a ``ServiceSpec``; discovery's prefetch templates come from the needs of the
findings the spec runs (``cds_service.rules.REGISTRY``). A service file in ``hooks/services/`` names its
spec by its ``id``; a file with another id gets the spec of the tacrolimus service of its hook.

Adding a service means: its ``ServiceSpec`` here (and a ``Trigger`` if it finds what it speaks about in a new
way), its file in ``hooks/services/``, and its kind in the ``runs_in`` of the findings it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

from cds_service.alert_memory import RepeatRule
from cds_service.hook_names import ORDER_SELECT, ORDER_SIGN, PATIENT_VIEW
from cds_service.protocol import CONTEXT_SUFFIX
from cds_service.record import Medication
from cds_service.rules import REGISTRY, needs_of
from cds_service.rules.model import INDICATOR_RANK
from cds_service.rules.registry import CO_PRESCRIBING, MONITORING, ORDER
from cds_service.terminology import Terminology
from cds_service.trigger import (
    ACTIVE_STORED,
    Resolver,
    find_active_tacrolimus,
    find_trigger_orders,
    find_watched_drafts,
)


@dataclass(frozen=True)
class Trigger:
    """How a service finds what it speaks about (rules.md § Trigger).

    ``find(context, hook, stored orders, terminology, resolve)`` gives the triggering orders, first the one
    that is "the order". ``on_record``: they are stored orders (the chart's active tacrolimus order, treated
    as continuing therapy) rather than drafts of this request.
    """

    find: Callable[[Mapping, str, Sequence[Mapping], Terminology, Resolver], list[Mapping]]
    on_record: bool
    reads_first: tuple[str, ...] = ()
    """Prefetch keys read before the trigger can be looked for (the rest is gathered only if it fires)."""
    from_context: Callable[[Mapping, str, Terminology, Resolver], list[Mapping]] | None = None
    """What the request's ``context`` alone must show before anything is read (the co-prescribing services'
    watched drafts): when it shows nothing the call is answered ``{"cards": []}`` without decoding the
    prefetch, however large."""

    def draft_ids(self, triggers: Iterable[Mapping]) -> set[str]:
        """The ids the record marks ``is_trigger`` (drafts only)."""
        return set() if self.on_record else {str(t.get("id")) for t in triggers}

    def stored_ids(self, triggers: list[Mapping]) -> tuple[str, ...]:
        """The stored order the answer is about (its recognition by name is said once); none for drafts."""
        return tuple(str(t.get("id")) for t in triggers[:1]) if self.on_record else ()

    def orders(self, medications: Iterable[Medication], triggers: list[Mapping]) -> tuple[Medication, ...]:
        """What the rules read as "the order": the triggering drafts, or the newest stored trigger."""
        if not self.on_record:
            return tuple(m for m in medications if m.is_trigger)
        by_id = {m.id: m for m in medications if not m.is_draft}
        return tuple(by_id[i] for i in [str(t.get("id")) for t in triggers][:1] if i in by_id)


DRAFT_TACROLIMUS = Trigger(
    find=lambda context, hook, stored, terminology, resolve: find_trigger_orders(
        context, hook, terminology, resolve
    ),
    on_record=False,
)
ACTIVE_TACROLIMUS = Trigger(
    find=lambda context, hook, stored, terminology, resolve: find_active_tacrolimus(
        stored, terminology, resolve
    ),
    on_record=True,
    reads_first=("medications",),
)

WATCHED: frozenset[str] = frozenset(needs_of(CO_PRESCRIBING).get("MedicationRequest", ())) - {"tacrolimus"}
"""The drug classes the co-prescribing services watch: every class the findings they run read (so a finding
added to them with its value set is watched without a second list), tacrolimus aside."""


def _watched_drafts(
    context: Mapping, hook: str, terminology: Terminology, resolve: Resolver
) -> list[Mapping]:
    return find_watched_drafts(context, hook, terminology, resolve, WATCHED)


WATCHED_DRAFT = Trigger(
    find=lambda context, hook, stored, terminology, resolve: (
        _watched_drafts(context, hook, terminology, resolve)
        if find_active_tacrolimus(stored, terminology, resolve)
        else []
    ),
    on_record=False,
    reads_first=("medications",),
    from_context=_watched_drafts,
)
"""rules.md v3 § The other prescriber: a watched draft, for a patient with an active or on-hold systemic
tacrolimus order on record, when no candidate draft is tacrolimus."""

REMEMBER_SELECTED = RepeatRule(remember_as=ORDER_SELECT, recall_from=None)
HOLD_BACK_AT_SIGN = RepeatRule(
    remember_as=None,
    recall_from=ORDER_SELECT,
    holdable=frozenset({"info"}),
    compare="same",
    why="info finding already shown at order-select for this patient and order",
)
"""Warning and critical findings are shown again at order-sign, the last look before signing."""
SHOWN_TO_OTHER_PRESCRIBER = "co-prescribing"
"""The memory the co-prescribing services write and patient-view reads: patient, finding and user."""
TELL_PATIENT_VIEW = RepeatRule(
    remember_as=SHOWN_TO_OTHER_PRESCRIBER, recall_from=None, per_order=False, per_user=True
)
ONCE_PER_WINDOW = RepeatRule(
    remember_as=PATIENT_VIEW,
    recall_from=PATIENT_VIEW,
    holdable=frozenset(INDICATOR_RANK),
    compare="not-higher",
    why="already shown at patient-view for this patient, at this indicator or higher,",
    per_order=False,
    also=(
        RepeatRule(
            remember_as=None,
            recall_from=SHOWN_TO_OTHER_PRESCRIBER,
            holdable=frozenset({"info", "warning"}),
            compare="not-higher",
            why="already shown to this user by a co-prescribing service for this patient, at this indicator "
            "or higher,",
            per_order=False,
            per_user=True,
        ),
    ),
)
"""The same finding for the same patient at most once per window (24 h in its service file) unless its
indicator rises; and not again for a user a co-prescribing service showed it to within that window, unless
it is critical (rules.md v3 § The other prescriber, Alert memory)."""
CO_SELECTED = "co-prescribing-select"
REMEMBER_CO_SELECTED = replace(REMEMBER_SELECTED, remember_as=CO_SELECTED, also=(TELL_PATIENT_VIEW,))
HOLD_BACK_CO_AT_SIGN = replace(HOLD_BACK_AT_SIGN, recall_from=CO_SELECTED, also=(TELL_PATIENT_VIEW,))
"""The co-prescribing services hold back at order-sign as the tacrolimus services do (the watched draft keeps
its id), in a memory of their own, and both tell patient-view what they showed."""


@dataclass(frozen=True)
class ServiceSpec:
    id: str
    hook: str
    kind: str
    """Which findings it runs: those whose declaration lists this kind (``rules.registry``)."""
    trigger: Trigger
    memory: RepeatRule
    continuing: bool = False
    """Treat "the order" as continuing therapy whatever the record says (the monitoring service)."""
    stored_statuses: tuple[str, ...] = ()
    """Its MedicationRequest template asks only for these statuses (none: every status)."""
    by_callback: tuple[str, ...] = ()
    """Keys its findings read that discovery does not ask the EHR to prefetch: read from the FHIR server
    only once the trigger fires (the co-prescribing services are called for every medication order)."""

    @property
    def context_schema(self) -> str:
        """The file in ``cds_service/schemas/`` that the request's ``context`` must match."""
        return f"{self.hook}{CONTEXT_SUFFIX}"

    @cached_property
    def findings(self) -> tuple[str, ...]:
        return REGISTRY.run_by(self.kind)

    @cached_property
    def only(self) -> frozenset[str] | None:
        """``RuleInput.only``: None when it runs the whole catalog."""
        return None if len(self.findings) == len(REGISTRY) else frozenset(self.findings)

    @cached_property
    def needs(self) -> dict[str, tuple[str, ...]]:
        """What its findings read: its prefetch templates are derived from it."""
        return needs_of(self.kind)

    def not_run_reason(self) -> str:
        """Why a finding the catalog has is not run here, in words (``explain``)."""
        families = REGISTRY.families()
        parts = []
        for family, ids in families.items():
            run = [i for i in ids if i in self.findings]
            if len(run) == len(ids):
                parts.append(f"the {family} family")
            elif len(run) < len(ids) / 2:
                parts.extend(run)
            else:
                left_out = [i for i in ids if i not in run]
                parts.append(f"the {family} family except {_and(left_out)}")
        return f"not run by this service: {self.hook} runs {_and(parts)}"


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


SPECS: tuple[ServiceSpec, ...] = (
    ServiceSpec("tacrolimus-order-select", ORDER_SELECT, ORDER, DRAFT_TACROLIMUS, REMEMBER_SELECTED),
    ServiceSpec("tacrolimus-order-sign", ORDER_SIGN, ORDER, DRAFT_TACROLIMUS, HOLD_BACK_AT_SIGN),
    ServiceSpec(
        "tacrolimus-monitoring", PATIENT_VIEW, MONITORING, ACTIVE_TACROLIMUS, ONCE_PER_WINDOW, continuing=True
    ),
    ServiceSpec(
        "tacrolimus-co-prescribing-select",
        ORDER_SELECT,
        CO_PRESCRIBING,
        WATCHED_DRAFT,
        REMEMBER_CO_SELECTED,
        stored_statuses=ACTIVE_STORED,
        by_callback=("procedures", "immunizations"),
    ),
    ServiceSpec(
        "tacrolimus-co-prescribing-sign",
        ORDER_SIGN,
        CO_PRESCRIBING,
        WATCHED_DRAFT,
        HOLD_BACK_CO_AT_SIGN,
        stored_statuses=ACTIVE_STORED,
        by_callback=("procedures", "immunizations"),
    ),
)
SPEC_BY_ID = {spec.id: spec for spec in SPECS}
_FIRST_FOR_HOOK = {spec.hook: spec for spec in reversed(SPECS)}
"""A service file with an id of its own gets the tacrolimus service of its hook (listed first)."""


def spec_for(service_id: str, hook: str) -> ServiceSpec:
    """The spec of a configured service: by its id, else the first (tacrolimus) service of its hook."""
    spec = SPEC_BY_ID.get(service_id)
    return spec if spec is not None and spec.hook == hook else _FIRST_FOR_HOOK[hook]
