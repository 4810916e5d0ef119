"""In-memory, read-only FHIR R4 resources with the search subset that CDS Hooks prefetch templates use.

The sandbox's FHIR server and the prefetch builder both answer from this store, so a prefetch value is
exactly what the service would get by running the same query against the server. A search parameter the
store cannot honour exactly raises ``SearchError`` (the server answers 400): a silently ignored filter would
hand the service wrong data.
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from cds_service.fixtures import FIXTURES_DIR, load_bundle, manifest

DEFAULT_COUNT = 50
MAX_COUNT = 1000

Token = tuple[str | None, str]
"""(system, code); system None for a plain ``code`` element such as ``status``."""


class SearchError(ValueError):
    """A search the store cannot answer exactly; ``code`` is the OperationOutcome issue code.

    ``not-supported`` for a parameter, modifier, prefix or sort this store does not implement; ``invalid``
    for a malformed value.
    """

    def __init__(self, parameter: str, message: str, code: str = "not-supported"):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message
        self.code = code


class UnsupportedResourceType(LookupError):
    """A resource type this server does not serve (FHIR REST: answered with 404)."""


class ConflictingResource(ValueError):
    """Two bundles hold different resources under the same type and id."""


def operation_outcome(code: str, diagnostics: str, *, expression: str | None = None) -> dict:
    """A one-issue OperationOutcome, the body FHIR servers send with an error status."""
    issue: dict = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


# ---------------------------------------------------------------------------------------------------------
# Dates: every FHIR date/dateTime is a range [low, high) given by its precision, compared in naive UTC.

_FHIR_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
DateRange = tuple[datetime, datetime]


def fhir_date_range(value: str) -> DateRange:
    """The instants a FHIR date/dateTime covers; a value without a zone is read as UTC."""
    m = _FHIR_DATE.match(value.strip())
    if not m:
        raise ValueError(f"not a FHIR date or dateTime: {value!r}")
    y = int(m["y"])
    if m["m"] is None:
        return datetime(y, 1, 1), datetime(y + 1, 1, 1)
    mo = int(m["m"])
    if m["d"] is None:
        low = datetime(y, mo, 1)
        return low, (datetime(y + 1, 1, 1) if mo == 12 else datetime(y, mo + 1, 1))
    day = date(y, mo, int(m["d"]))
    if m["H"] is None:
        low = datetime(day.year, day.month, day.day)
        return low, low + timedelta(days=1)
    step = timedelta(seconds=1) if m["S"] is not None else timedelta(minutes=1)
    low = datetime(day.year, day.month, day.day, int(m["H"]), int(m["M"]), int(m["S"] or 0))
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        low -= sign * timedelta(hours=int(m["tz"][1:3]), minutes=int(m["tz"][4:6]))
    return low, low + step


def _period_range(period: Mapping) -> DateRange | None:
    start, end = period.get("start"), period.get("end")
    if not start and not end:
        return None
    low = fhir_date_range(start)[0] if start else datetime.min
    high = fhir_date_range(end)[1] if end else datetime.max
    return low, high


_DATE_ELEMENTS: dict[str, tuple[str, ...]] = {
    # The first element present is the resource's date, for both filtering and _sort.
    "Observation": ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued"),
    "Condition": ("recordedDate", "onsetDateTime", "onsetPeriod"),
    "MedicationRequest": ("authoredOn",),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime", "onsetPeriod"),
    "Encounter": ("period",),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "Immunization": ("occurrenceDateTime", "occurrenceString"),
}


def resource_date(resource: Mapping) -> DateRange | None:
    """The date the ``date`` search parameter and ``_sort=date`` use for this resource, if any."""
    for element in _DATE_ELEMENTS.get(resource.get("resourceType", ""), ()):
        value = resource.get(element)
        if value:
            try:
                return _period_range(value) if isinstance(value, Mapping) else fhir_date_range(value)
            except ValueError:
                return None
    return None


_DATE_PREFIXES = ("eq", "ge", "le", "gt", "lt")


def _date_matcher(parameter: str, value: str) -> Callable[[DateRange | None], bool]:
    prefix, rest = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    if prefix not in _DATE_PREFIXES:
        raise SearchError(parameter, f"unsupported date prefix {prefix!r} (supported: eq, ge, le, gt, lt)")
    try:
        low, high = fhir_date_range(rest)
    except ValueError as e:
        raise SearchError(parameter, str(e), "invalid") from None
    tests: dict[str, Callable[[DateRange], bool]] = {
        "eq": lambda r: low <= r[0] and r[1] <= high,
        "ge": lambda r: r[1] > low,
        "le": lambda r: r[0] < high,
        "gt": lambda r: r[1] > high,
        "lt": lambda r: r[0] < low,
    }
    test = tests[prefix]
    return lambda r: r is not None and test(r)


# ---------------------------------------------------------------------------------------------------------
# Tokens


def _codings(concept: Mapping | None) -> list[Token]:
    if not isinstance(concept, Mapping):
        return []
    return [(c.get("system"), c["code"]) for c in concept.get("coding", []) if c.get("code")]


def _codings_of_list(concepts: Sequence | None) -> list[Token]:
    return [t for concept in concepts or () for t in _codings(concept)]


def _plain_code(value: object) -> list[Token]:
    return [(None, value)] if isinstance(value, str) and value else []


def _token_matcher(parameter: str, value: str) -> Callable[[frozenset[Token]], bool]:
    """One comma-separated alternative: ``system|code``, ``|code``, ``system|`` or bare ``code``."""
    if "|" not in value:
        return lambda tokens: any(code == value for _, code in tokens)
    system, code = value.split("|", 1)
    if not system and not code:
        raise SearchError(parameter, "empty token", "invalid")
    if not code:
        return lambda tokens: any(s == system for s, _ in tokens)
    wanted = (system or None, code)
    return lambda tokens: wanted in tokens


# ---------------------------------------------------------------------------------------------------------
# What each resource type can be searched by. The CapabilityStatement is generated from this table.


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: str  # FHIR search parameter type: reference, token or date
    documentation: str

    def as_json(self) -> dict:
        return {"name": self.name, "type": self.type, "documentation": self.documentation}


_PATIENT = SearchParam("patient", "reference", "`<id>`, `Patient/<id>` or a comma-separated list of them.")
_SUBJECT = SearchParam("subject", "reference", "Same as `patient` (only Patient subjects are stored).")
_CODE = SearchParam("code", "token", "Comma-separated `system|code` or bare `code`; any coding matches.")
_STATUS = SearchParam("status", "token", "The `status` code.")
_CLINICAL = SearchParam("clinical-status", "token", "A `clinicalStatus` coding.")
_VERIFICATION = SearchParam("verification-status", "token", "A `verificationStatus` coding.")
_CATEGORY = SearchParam("category", "token", "A `category` coding.")


def _date_param(elements: str) -> SearchParam:
    return SearchParam("date", "date", f"Prefixes eq/ge/le/gt/lt on {elements} (first present).")


SEARCH_PARAMS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (),
    "Practitioner": (),
    "Medication": (_CODE,),
    "Observation": (
        _PATIENT, _SUBJECT, _CODE, _CATEGORY, _STATUS, _date_param("effective[x], else issued"),
    ),
    "Condition": (
        _PATIENT, _SUBJECT, _CODE, _CATEGORY, _CLINICAL, _VERIFICATION,
        _date_param("recordedDate, else onset[x]"),
    ),
    "MedicationRequest": (
        _PATIENT, _SUBJECT, _CODE, _STATUS,
        SearchParam("intent", "token", "The `intent` code."),
        _date_param("authoredOn"),
        SearchParam("authoredon", "date", "Same as `date`."),
    ),
    "AllergyIntolerance": (
        _PATIENT, _CODE, _CLINICAL, _VERIFICATION, _date_param("recordedDate, else onset[x]"),
    ),
    "Encounter": (_PATIENT, _SUBJECT, _STATUS, _date_param("period")),
    "Procedure": (_PATIENT, _SUBJECT, _CODE, _STATUS, _date_param("performed[x]")),
    "Immunization": (
        _PATIENT, _STATUS, SearchParam("vaccine-code", "token", "A `vaccineCode` coding."),
        _date_param("occurrence[x]"),
    ),
}  # fmt: skip

COMMON_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", "Comma-separated resource ids."),
    SearchParam("_count", "number", f"Page size, default {DEFAULT_COUNT}, at most {MAX_COUNT}."),
    SearchParam("_offset", "number", "Index of the first match on this page (used by `next` links)."),
    SearchParam("_sort", "string", "`date` or `-date` (resources without a date come last)."),
    SearchParam("_format", "string", "`json`, `application/json` or `application/fhir+json` only."),
)
_JSON_FORMATS = {"json", "application/json", "application/fhir+json"}


def _tokens_for(resource: Mapping, parameter: str) -> list[Token]:
    """Tokens of one search parameter; MedicationRequest ``code`` needs the store (see FhirStore._tokens)."""
    if parameter == "code":
        return _codings(resource.get("code"))
    if parameter == "category":
        return _codings_of_list(resource.get("category"))
    if parameter == "vaccine-code":
        return _codings(resource.get("vaccineCode"))
    if parameter == "clinical-status":
        return _codings(resource.get("clinicalStatus"))
    if parameter == "verification-status":
        return _codings(resource.get("verificationStatus"))
    return _plain_code(resource.get(parameter))  # status, intent


def _patient_id(resource: Mapping) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return _reference_id(ref, "Patient")


def _reference_id(reference: str, resource_type: str) -> str | None:
    """``Patient/1``, ``http://x/Patient/1`` or ``Patient/1/_history/2`` -> ``1``; other types -> None."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    resource: dict
    order: int
    patient: str | None
    date: DateRange | None
    tokens: dict[str, frozenset[Token]]


@dataclass
class _TypeIndex:
    entries: list[_Entry] = field(default_factory=list)
    by_patient: dict[str, list[_Entry]] = field(default_factory=dict)
    by_code: dict[str, list[_Entry]] = field(default_factory=dict)
    """Bare code -> entries with a coding of that code (any system); narrows ``code=`` searches."""


@dataclass
class _Query:
    filters: list[Callable[[_Entry], bool]] = field(default_factory=list)
    ids: set[str] | None = None
    patients: set[str] | None = None
    codes: set[str] | None = None
    sort: str | None = None
    count: int = DEFAULT_COUNT
    offset: int = 0


class FhirStore:
    """Resources by type and id, loaded from Bundles; read-only once searched."""

    def __init__(self, bundles: Iterable[Mapping] = ()):
        self._resources: dict[str, dict[str, dict]] = {}
        self._indexes: dict[str, _TypeIndex] | None = None
        self._index_lock = threading.Lock()  # the server searches from many threads
        for bundle in bundles:
            self.add_bundle(bundle)

    @classmethod
    def from_fixtures(
        cls,
        names: Iterable[str] | None = None,
        today: date | None = None,
        *,
        directory: Path = FIXTURES_DIR,
        extra_bundles: Iterable[Mapping] = (),
    ) -> FhirStore:
        """The fixture patients (dates moved to ``today``) without their drafts, plus ``extra_bundles``."""
        fixtures = manifest(directory)
        store = cls()
        for name in sorted(fixtures) if names is None else names:
            drafts = fixtures.get(name, {}).get("drafts", ())
            store.add_bundle(load_bundle(name, today, directory), exclude=drafts)
        for bundle in extra_bundles:
            store.add_bundle(bundle)
        return store

    def add_bundle(self, bundle: Mapping, exclude: Iterable[str] = ()) -> None:
        """Store every entry's resource except those named in ``exclude`` (``Type/id``)."""
        skip = set(exclude)
        for entry in bundle.get("entry", []):
            resource = entry.get("resource")
            if resource and f"{resource.get('resourceType')}/{resource.get('id')}" not in skip:
                self.add(resource)

    def add(self, resource: Mapping) -> None:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not rtype or not rid:
            raise ValueError("a stored resource needs resourceType and id")
        stored = self._resources.setdefault(rtype, {})
        if rid in stored and stored[rid] != resource:
            raise ConflictingResource(f"{rtype}/{rid} is already stored with different content")
        stored[rid] = copy.deepcopy(dict(resource))
        self._indexes = None

    def resource_types(self) -> list[str]:
        return sorted(set(SEARCH_PARAMS) | set(self._resources))

    def read(self, resource_type: str, resource_id: str) -> dict | None:
        """A copy of the resource, or None when this type/id is not stored."""
        found = self._resources.get(resource_type, {}).get(resource_id)
        return copy.deepcopy(found) if found is not None else None

    def search(self, resource_type: str, params: Mapping[str, Sequence[str]], base_url: str) -> dict:
        """A ``searchset`` Bundle of one page; links are absolute URLs under ``base_url``.

        Entries share the stored resources: serialise the result, do not modify it.
        """
        if resource_type not in self.resource_types():
            raise UnsupportedResourceType(resource_type)
        query = self._parse(resource_type, params)
        index = self._index().get(resource_type, _TypeIndex())
        matches = [e for e in self._candidates(index, query) if all(f(e) for f in query.filters)]
        matches.sort(key=lambda e: e.order)
        if query.sort:
            dated = [e for e in matches if e.date is not None]
            dated.sort(key=lambda e: e.date[0], reverse=query.sort == "-date")  # type: ignore[index]
            matches = dated + [e for e in matches if e.date is None]
        page = matches[query.offset : query.offset + query.count]
        return self._bundle(resource_type, params, base_url, query, len(matches), page)

    # --- search internals ------------------------------------------------------------------------------

    def _parse(self, resource_type: str, params: Mapping[str, Sequence[str]]) -> _Query:
        allowed = {p.name: p for p in SEARCH_PARAMS.get(resource_type, ())}
        query = _Query()
        for name, values in params.items():
            if name not in allowed and name not in {p.name for p in COMMON_PARAMS}:
                known = ", ".join(sorted(allowed) + [p.name for p in COMMON_PARAMS])
                detail = "modifiers are not supported" if ":" in name else "not supported"
                raise SearchError(name, f"search parameter {detail} on {resource_type} (supported: {known})")
            for value in values:
                if value == "":
                    raise SearchError(name, "empty value", "invalid")
                self._apply(query, resource_type, name, allowed.get(name), value)
        return query

    def _apply(self, q: _Query, rtype: str, name: str, param: SearchParam | None, value: str) -> None:
        if name in ("_count", "_offset"):
            if not value.isdigit():
                raise SearchError(name, f"not a non-negative integer: {value!r}", "invalid")
            if name == "_count":
                q.count = min(int(value), MAX_COUNT)
            else:
                q.offset = int(value)
        elif name == "_sort":
            if value not in ("date", "-date") or "date" not in {p.name for p in SEARCH_PARAMS.get(rtype, ())}:
                raise SearchError(name, f"unsupported sort {value!r} on {rtype} (supported: date, -date)")
            q.sort = value
        elif name == "_format":
            if value not in _JSON_FORMATS:
                raise SearchError(name, f"unsupported format {value!r}; this server speaks JSON only")
        elif name == "_id":
            ids = set(value.split(","))
            q.ids = ids if q.ids is None else q.ids & ids
            q.filters.append(lambda e: e.resource["id"] in ids)
        elif param is not None and param.type == "reference":
            # A reference to another type (``subject=Group/1``) can match no stored patient.
            given = (_reference_id(v, "Patient") if "/" in v else v for v in value.split(","))
            wanted = {pid for pid in given if pid}
            q.patients = wanted if q.patients is None else q.patients & wanted
            q.filters.append(lambda e: e.patient in wanted)
        elif param is not None and param.type == "date":
            matcher = _date_matcher(name, value)
            q.filters.append(lambda e: matcher(e.date))
        elif param is not None and param.type == "token":
            alternatives = [_token_matcher(name, v) for v in value.split(",")]
            if name == "code":
                bare = {v.split("|", 1)[-1] for v in value.split(",")}
                # Narrow by one code parameter only: an entry can carry several codings, so the codes
                # of two ANDed parameters need not be equal. A `system|` alternative cannot narrow.
                if all(bare) and q.codes is None:
                    q.codes = bare
            q.filters.append(lambda e: any(m(e.tokens[name]) for m in alternatives))

    @staticmethod
    def _candidates(index: _TypeIndex, q: _Query) -> list[_Entry]:
        """A superset of the matches, as small as the indexes allow; the filters decide."""
        pools: list[list[_Entry]] = []
        if q.ids is not None:
            pools.append([e for e in index.entries if e.resource["id"] in q.ids])
        if q.patients is not None:
            pools.append([e for p in q.patients for e in index.by_patient.get(p, [])])
        if q.codes is not None:
            seen: dict[int, _Entry] = {}
            for code in q.codes:
                seen.update((id(e), e) for e in index.by_code.get(code, []))
            pools.append(list(seen.values()))
        if not pools:
            return list(index.entries)
        smallest = min(pools, key=len)
        return list({id(e): e for e in smallest}.values())

    def _index(self) -> dict[str, _TypeIndex]:
        with self._index_lock:
            if self._indexes is None:
                self._indexes = self._build_indexes()
            return self._indexes

    def _build_indexes(self) -> dict[str, _TypeIndex]:
        indexes: dict[str, _TypeIndex] = {}
        order = 0
        for rtype, resources in self._resources.items():
            index = indexes.setdefault(rtype, _TypeIndex())
            token_params = [p.name for p in SEARCH_PARAMS.get(rtype, ()) if p.type == "token"]
            for resource in resources.values():
                entry = _Entry(
                    resource=resource,
                    order=order,
                    patient=_patient_id(resource),
                    date=resource_date(resource),
                    tokens={p: frozenset(self._tokens(resource, p)) for p in token_params},
                )
                order += 1
                index.entries.append(entry)
                if entry.patient:
                    index.by_patient.setdefault(entry.patient, []).append(entry)
                for code in {c for _, c in entry.tokens.get("code", ())}:
                    index.by_code.setdefault(code, []).append(entry)
        return indexes

    def _tokens(self, resource: Mapping, parameter: str) -> list[Token]:
        if parameter == "code" and resource.get("resourceType") == "MedicationRequest":
            if "medicationCodeableConcept" in resource:
                return _codings(resource["medicationCodeableConcept"])
            med = self._medication(resource, resource.get("medicationReference", {}).get("reference", ""))
            return _codings(med.get("code")) if med else []
        return _tokens_for(resource, parameter)

    def _medication(self, resource: Mapping, reference: str) -> Mapping | None:
        """The Medication a MedicationRequest points to: contained (``#id``) or stored."""
        if reference.startswith("#"):
            return next((c for c in resource.get("contained", []) if c.get("id") == reference[1:]), None)
        med_id = _reference_id(reference, "Medication")
        return self._resources.get("Medication", {}).get(med_id) if med_id else None

    @staticmethod
    def _bundle(
        rtype: str, params: Mapping[str, Sequence[str]], base: str, q: _Query, total: int, page: list[_Entry]
    ) -> dict:
        base = base.rstrip("/")

        def link(offset: int) -> str:
            pairs = [(k, v) for k, vs in params.items() if k not in ("_offset", "_count") for v in vs]
            pairs += [("_count", str(q.count)), ("_offset", str(offset))]
            return f"{base}/{rtype}?{urlencode(pairs, safe=',|:/')}"

        links = [{"relation": "self", "url": link(q.offset)}]
        if q.count and q.offset + q.count < total:
            links.append({"relation": "next", "url": link(q.offset + q.count)})
        bundle: dict = {
            "resourceType": "Bundle",
            "type": "searchset",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "total": total,
            "link": links,
        }
        if page:
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/{rtype}/{e.resource['id']}",
                    "resource": e.resource,
                    "search": {"mode": "match"},
                }
                for e in page
            ]
        return bundle


def capability_statement(store: FhirStore) -> dict:
    """What this server answers, generated from the same table the search code enforces."""
    common = [p.as_json() for p in COMMON_PARAMS]
    resources = []
    for rtype in store.resource_types():
        params = SEARCH_PARAMS.get(rtype, ())
        resources.append(
            {
                "type": rtype,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [p.as_json() for p in params],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "tacrolimus-cds sandbox FHIR server"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Read-only. Any other search parameter or modifier is answered with 400.",
                "resource": resources,
                "searchParam": common,
            }
        ],
    }
