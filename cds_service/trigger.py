"""Does this hook call order systemic tacrolimus? (rules.md, "When the service speaks at all").

Works on the raw JSON of ``context.draftOrders``: EHRs send draft orders without ``Bundle.type``, in STU3 or
DSTU2 shape, with extra fields; none of that may stop the service from recognising the drug.

An order triggers when its medication carries an RxNorm code of the ``tacrolimus`` value set (systemic
products only), or, with no RxNorm coding at all, when its text names tacrolimus or one of its brands and
nothing says it is topical. An RxNorm-coded order outside the set never triggers on its text: the code is the
more precise statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cds_service.terminology import Terminology, canonical_system

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ORDER_TYPES = ("MedicationRequest", "MedicationOrder")  # MedicationOrder: DSTU2 clients
TACROLIMUS_WORDS = re.compile(r"\b(tacrolimus|prograf|envarsus|astagraf|hecoria|advagraf|modigraf)\b", re.I)
TOPICAL_WORDS = re.compile(
    r"\b(topical|ointment|cream|lotion|protopic|cutaneous|eye drops?|ophthalmic)\b", re.I
)

Resolver = Callable[[str], Mapping | None]
"""Looks up a Medication by reference (``Medication/x``); None when it cannot be found."""


@dataclass(frozen=True)
class DrugName:
    """What an order says its medication is."""

    codings: tuple[Mapping, ...]
    names: tuple[str, ...]
    """The concept's text, then its codings' displays, then the reference's display."""

    @property
    def text(self) -> str:
        """Every word the order uses for the drug: what the text fallback searches."""
        return " ".join(self.names)

    @property
    def label(self) -> str:
        """One name to show."""
        return self.names[0] if self.names else ""


def draft_resources(context: Mapping) -> list[Mapping]:
    """Every resource in ``context.draftOrders`` (``context.medications`` for medication-prescribe)."""
    bundle = context.get("draftOrders") or context.get("medications")
    if not isinstance(bundle, Mapping):
        return []
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    return [
        e["resource"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
    ]


def _codeable(concept: object) -> DrugName | None:
    if not isinstance(concept, Mapping):
        return None
    codings = tuple(c for c in concept.get("coding") or () if isinstance(c, Mapping))
    words = [concept.get("text")] + [c.get("display") for c in codings]
    return DrugName(codings, tuple(w.strip() for w in words if isinstance(w, str) and w.strip()))


def drug_name(order: Mapping, resolve: Resolver | None = None) -> DrugName:
    """An order's medication: inline concept, contained or referenced Medication, else the reference text."""
    found = _codeable(order.get("medicationCodeableConcept"))
    if found:
        return found
    ref = order.get("medicationReference")
    if not isinstance(ref, Mapping):
        return DrugName((), ())
    reference = ref.get("reference")
    target = reference if isinstance(reference, str) else ""
    medication = None
    if target.startswith("#"):
        medication = next(
            (c for c in order.get("contained") or () if isinstance(c, Mapping) and c.get("id") == target[1:]),
            None,
        )
    elif target and resolve is not None:
        medication = resolve(target)
    name = _codeable(medication.get("code")) if isinstance(medication, Mapping) else None
    shown = ref.get("display")
    display = (shown.strip(),) if isinstance(shown, str) and shown.strip() else ()
    if name:
        return DrugName(name.codings, name.names + display)
    return DrugName((), display)


def is_systemic_tacrolimus(name: DrugName, terminology: Terminology) -> bool:
    if any(canonical_system(c.get("system")) == RXNORM for c in name.codings):
        return "tacrolimus" in terminology.concepts(name.codings)
    return bool(TACROLIMUS_WORDS.search(name.text)) and not TOPICAL_WORDS.search(name.text)


def order_reference(resource: Mapping) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def candidate_orders(context: Mapping, hook: str) -> list[Mapping]:
    """The orders this hook asks about: the selections on order-select, every draft order otherwise."""
    orders = [r for r in draft_resources(context) if r.get("resourceType") in ORDER_TYPES]
    if hook == "order-select":
        selected = {s for s in context.get("selections") or () if isinstance(s, str)}
        orders = [r for r in orders if order_reference(r) in selected]
    return orders


def find_trigger_orders(
    context: Mapping, hook: str, terminology: Terminology, resolve: Resolver | None = None
) -> list[Mapping]:
    """The candidate orders that are systemic tacrolimus, in request order."""
    return [
        o
        for o in candidate_orders(context, hook)
        if is_systemic_tacrolimus(drug_name(o, resolve), terminology)
    ]


def bundle_resolver(resources: Iterable[Mapping]) -> Resolver:
    """Resolve ``Medication/x`` against Medication resources sent in the same request."""
    by_ref = {f"Medication/{r.get('id')}": r for r in resources if r.get("resourceType") == "Medication"}
    return by_ref.get
