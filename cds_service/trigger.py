"""Does this hook call order systemic tacrolimus? (rules.md, "When the service speaks at all").

Works on the raw JSON of ``context.draftOrders``: EHRs send draft orders without ``Bundle.type``, in STU3 or
DSTU2 shape, with extra fields; none of that may stop the service from recognising the drug.

An order triggers when its medication belongs to the drug class ``tacrolimus`` as rules.md § Drug recognition
defines it (:meth:`Terminology.recognise`): by a code of its concept, by an ingredient code of its Medication,
or else by a tacrolimus name in its text or displays; a form for skin, eye, ear or mucosa never counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cds_service.fhir_json import is_object, obj
from cds_service.terminology import Recognition, Terminology

ORDER_TYPES = ("MedicationRequest", "MedicationOrder")  # MedicationOrder: DSTU2 clients
DRAFT_SERVICE_CLASSES = frozenset({"live-vaccines"})
"""What a ServiceRequest in ``draftOrders`` can be an order of: a vaccine ordered as a service (N19)."""

Resolver = Callable[[str], Mapping | None]
"""Looks up a Medication by reference (``Medication/x``, ``urn:uuid:…``, an absolute URL); None when it cannot
be found. Contained ``#id`` references are resolved in the order itself (``drug_name``)."""

READABLE = re.compile(r"Medication/[A-Za-z0-9\-.]{1,64}")
"""A reference a FHIR server can be asked for: a relative ``Medication/id`` (FHIR's id syntax)."""
_HISTORY = re.compile(r"/_history/[^/]*$")


@dataclass(frozen=True)
class DrugName:
    """What an order says its medication is."""

    codings: tuple[Mapping, ...]
    names: tuple[str, ...]
    """The concept's text, then its codings' displays, then the reference's display."""
    ingredients: tuple[Mapping, ...] = ()
    """Codings of the Medication's ``ingredient[].itemCodeableConcept``."""
    other_words: tuple[str, ...] = ()
    """Texts and displays of the Medication's ingredients and form: read for names and local forms."""
    unresolved: bool = False
    """True when the order references a Medication that was neither sent nor could be read."""
    reference: str = ""
    """The ``medicationReference.reference`` when it could not be resolved: the card names it."""

    @property
    def text(self) -> str:
        """Every word the order uses for the drug: what recognition by name searches."""
        return " ".join(self.names + self.other_words)

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


def _list(value: object) -> list:
    """A JSON array, or none: malformed JSON must never raise here (one bad order would silence all)."""
    return value if isinstance(value, list) else []


def codeable_name(concept: object) -> DrugName | None:
    """A CodeableConcept dict as a DrugName (its codings, text and displays); None when it is not one."""
    if not isinstance(concept, Mapping):
        return None
    coding = concept.get("coding")
    codings = tuple(c for c in coding if isinstance(c, Mapping)) if isinstance(coding, list) else ()
    words = [concept.get("text")] + [c.get("display") for c in codings]
    return DrugName(codings, tuple(w.strip() for w in words if isinstance(w, str) and w.strip()))


def _medication_parts(medication: Mapping) -> tuple[tuple[Mapping, ...], tuple[str, ...]]:
    """A Medication's ingredient codings, and the words of its ingredients and form."""
    codings: list[Mapping] = []
    words: list[str] = []
    ingredients = medication.get("ingredient")
    for ingredient in ingredients if isinstance(ingredients, list) else ():
        item = (
            codeable_name(ingredient.get("itemCodeableConcept")) if isinstance(ingredient, Mapping) else None
        )
        if item:
            codings += item.codings
            words += item.names
    form = codeable_name(medication.get("form"))
    if form:
        words += form.names
    return tuple(codings), tuple(words)


def drug_name(order: Mapping, resolve: Resolver | None = None) -> DrugName:
    """An order's medication: inline concept, contained or referenced Medication, else the reference text."""
    found = codeable_name(order.get("medicationCodeableConcept"))
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
            (
                c
                for c in _list(order.get("contained"))
                if isinstance(c, Mapping) and c.get("id") == target[1:]
            ),
            None,
        )
    elif target and resolve is not None:
        medication = resolve(target)
    shown = ref.get("display")
    display = (shown.strip(),) if isinstance(shown, str) and shown.strip() else ()
    if not isinstance(medication, Mapping):
        return DrugName((), display, unresolved=bool(target), reference=target)
    name = codeable_name(medication.get("code")) or DrugName((), ())
    ingredients, other_words = _medication_parts(medication)
    return DrugName(name.codings, name.names + display, ingredients, other_words)


def recognise(name: DrugName, terminology: Terminology) -> Recognition:
    """The drug classes of an order's medication: by code, by ingredient, else by name (rules.md)."""
    return terminology.recognise(name.codings, name.ingredients, name.names + name.other_words)


def is_systemic_tacrolimus(name: DrugName, terminology: Terminology) -> bool:
    return "tacrolimus" in recognise(name, terminology).classes


def order_reference(resource: Mapping) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def candidate_orders(context: Mapping, hook: str, types: tuple[str, ...] = ORDER_TYPES) -> list[Mapping]:
    """The orders this hook asks about: the selections on order-select, every draft order otherwise."""
    orders = [r for r in draft_resources(context) if r.get("resourceType") in types]
    if hook == "order-select":
        selected = {s for s in _list(context.get("selections")) if isinstance(s, str)}
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


def find_watched_drafts(
    context: Mapping,
    hook: str,
    terminology: Terminology,
    resolve: Resolver | None,
    watched: frozenset[str],
) -> list[Mapping]:
    """The co-prescribing services' drafts: candidate orders of a watched drug class, in request order; none
    when a candidate is systemic tacrolimus (the tacrolimus services answer that call). Read from the
    request's ``context`` alone."""
    found = []
    for order in candidate_orders(context, hook, (*ORDER_TYPES, "ServiceRequest")):
        if order.get("resourceType") == "ServiceRequest":  # a vaccine ordered as a service, by its code
            name = codeable_name(order.get("code")) or DrugName((), ())
            classes = recognise(name, terminology).classes & DRAFT_SERVICE_CLASSES
        else:
            classes = recognise(drug_name(order, resolve), terminology).classes
        if "tacrolimus" in classes:
            return []
        if classes & watched:
            found.append(order)
    return found


def readable_reference(reference: str, base_url: str | None = None) -> str | None:
    """``Medication/id`` for a reference the EHR's FHIR server can be asked for: a relative one, or an
    absolute URL on that server (``base_url``; any server when it is not known, for matching only); None for
    ``urn:uuid:``, ``#id`` and another server's URL, which are only ever resolved inside the request."""
    reference = _HISTORY.sub("", reference.strip())
    if "://" in reference:
        base = (base_url or "").rstrip("/") + "/"
        if base_url and reference.startswith(base):
            reference = reference[len(base) :]
        elif base_url is None and "/Medication/" in reference:
            reference = "Medication/" + reference.rsplit("/Medication/", 1)[1]
        else:
            return None
    return reference if READABLE.fullmatch(reference) else None


class MedicationIndex:
    """The Medications a request carries, by ``Medication/id`` and by their entry's ``fullUrl`` (``urn:uuid:``
    or absolute): what a ``medicationReference`` is resolved against before the FHIR server is asked.

    ``more`` gives further (fullUrl, resource) pairs, read only on the first miss of a reference no server can
    be asked for (``urn:uuid:``, or any reference when the call has no FHIR server to ask): the prefetch, so
    an order whose drug is coded, or a ``Medication/id`` a server can be asked for, is still answered without
    decoding the prefetch.
    """

    def __init__(
        self,
        base_url: str | None = None,
        more: Callable[[], Iterable[tuple[str | None, Mapping]]] | None = None,
        can_fetch: bool = True,
    ):
        self.base_url = base_url
        self.can_fetch = can_fetch
        self._by_ref: dict[str, Mapping] = {}
        self._by_url: dict[str, Mapping] = {}
        self._more = more

    def add(self, resource: Mapping, full_url: object = None) -> None:
        if not is_object(resource) or resource.get("resourceType") != "Medication":
            return
        if isinstance(resource.get("id"), str):
            self._by_ref.setdefault(f"Medication/{resource['id']}", resource)
        if isinstance(full_url, str) and full_url.strip():
            self._by_url.setdefault(full_url.strip(), resource)

    def add_bundle(self, bundle: object) -> None:
        for full_url, resource in bundle_entries(bundle):
            self.add(resource, full_url)

    def find(self, reference: str) -> Mapping | None:
        found = self._find(reference)
        fetchable = self.can_fetch and readable_reference(reference, self.base_url)
        if found is None and self._more is not None and not fetchable:
            more, self._more = self._more, None
            for full_url, resource in more():
                self.add(resource, full_url)
            found = self._find(reference)
        return found

    def _find(self, reference: str) -> Mapping | None:
        reference = reference.strip()
        found = self._by_url.get(reference)
        if found is None and (readable := readable_reference(reference, self.base_url)):
            found = self._by_ref.get(readable)
        return found


def bundle_entries(bundle: object) -> list[tuple[str | None, Mapping]]:
    """(fullUrl, resource) of each entry of a Bundle dict; nothing for anything else (never raises)."""
    entries = obj(bundle).get("entry")
    return [
        (e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None, e["resource"])
        for e in (entries if isinstance(entries, list) else ())
        if is_object(e) and is_object(e.get("resource"))
    ]


def bundle_resolver(resources: Iterable[Mapping]) -> Resolver:
    """Resolve ``Medication/x`` against Medication resources sent in the same request."""
    index = MedicationIndex()
    for resource in resources:
        index.add(resource)
    return index.find


ACTIVE_STORED = ("active", "on-hold")
"""Statuses of a stored order that mean "the patient is on it" (a stored draft is not signed yet)."""


def find_active_tacrolimus(
    stored: Iterable[Mapping], terminology: Terminology, resolve: Resolver | None = None
) -> list[Mapping]:
    """patient-view's trigger: the patient's stored, active (or on-hold) systemic tacrolimus orders.

    The same recognition as a draft order's (by code, ingredient, else name; never a skin form), newest
    ``authoredOn`` first: the first is "the order" the monitoring rules treat as continuing therapy.
    """
    found = [
        o
        for o in stored
        if o.get("resourceType") in ORDER_TYPES
        and o.get("status") in ACTIVE_STORED
        and is_systemic_tacrolimus(drug_name(o, resolve), terminology)
    ]
    return sorted(found, key=lambda o: str(o.get("authoredOn") or ""), reverse=True)
