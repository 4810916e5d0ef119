"""Gather the patient's resources for one hook call: prefetch first, then the FHIR server for the rest.

Every prefetch state of CDS Hooks 2.0 is handled (compare HAPI FHIR's CDS Hooks module):

- key absent: the client did not or could not fulfil it: fetch it;
- key ``null``: the query ran and found nothing: no data, nothing to fetch;
- an OperationOutcome (alone, or as the Bundle's only content): the client hit an error: fetch it;
- a Bundle with a ``next`` link: the rest of the pages are fetched;
- anything else malformed: treated as absent.

All fetches of a request run in parallel under one deadline. A key that still cannot be had is
``unavailable``, with a reason that is safe to log and to show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from cds_service.fhir_client import FhirClient, FhirError, bundle_resources, next_link
from cds_service.prefetch import KEY_BY_NAME, TemplateError, substitute_tokens

_ABSENT = object()


@dataclass
class Gathered:
    resources: dict[str, list[dict]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Keys that could not be had at all, with the reason."""
    incomplete: dict[str, str] = field(default_factory=dict)
    """Keys with some data but not all of it (pages that could not be fetched), with the reason."""
    fetched: list[str] = field(default_factory=list)
    """Keys that came (wholly or partly) from the FHIR server."""

    @property
    def missing_required(self) -> dict[str, str]:
        return {k: why for k, why in self.unavailable.items() if KEY_BY_NAME[k].required}


def _is_outcome(value: Mapping) -> bool:
    if value.get("resourceType") == "OperationOutcome":
        return True
    # Some clients wrap the error in a Bundle that holds nothing but OperationOutcomes.
    entries = value.get("entry") or []
    return (
        value.get("resourceType") == "Bundle"
        and bool(entries)
        and all(
            isinstance(e, Mapping) and (e.get("resource") or {}).get("resourceType") == "OperationOutcome"
            for e in entries
        )
    )


def _from_prefetch(key: str, value: object) -> tuple[list[dict] | None, dict | None, str | None]:
    """(resources, bundle-to-continue, why-fetch) for one prefetch value; resources None means fetch it."""
    spec = KEY_BY_NAME[key]
    if value is _ABSENT:
        return None, None, "not in prefetch"
    if value is None:
        return [], None, None
    if not isinstance(value, Mapping):
        return None, None, "prefetch value is not a FHIR resource"
    if _is_outcome(value):
        return None, None, "prefetch carried an OperationOutcome"
    if spec.is_read:
        if value.get("resourceType") == spec.resource_type:
            return [dict(value)], None, None
        if value.get("resourceType") == "Bundle":  # some clients answer a read with a searchset
            found = [r for r in bundle_resources(value) if r.get("resourceType") == spec.resource_type]
            return found[:1], None, None
        return None, None, f"prefetch holds a {value.get('resourceType')!r}, not a {spec.resource_type}"
    if value.get("resourceType") != "Bundle":
        return None, None, f"prefetch holds a {value.get('resourceType')!r}, not a Bundle"
    # Included resources (a Medication next to its MedicationRequest) are kept: they resolve references.
    return bundle_resources(value), (dict(value) if next_link(value) else None), None


def _read_one(client: FhirClient, query: str) -> list[dict]:
    return [r for r in [client.read(query)] if r is not None]


def gather(
    prefetch: Mapping | None,
    templates: Mapping[str, str],
    context: Mapping,
    client: FhirClient | None,
    executor: ThreadPoolExecutor,
    client_unusable_reason: str = "no fhirServer with fhirAuthorization in the request",
) -> Gathered:
    """Resources per prefetch key; what the prefetch lacks is fetched in parallel within the deadline."""
    prefetch = prefetch if isinstance(prefetch, Mapping) else {}
    result = Gathered()
    jobs: dict[str, Callable[[], list[dict]]] = {}
    for key, template in templates.items():
        resources, first_page, why = _from_prefetch(key, prefetch.get(key, _ABSENT))
        if resources is not None:
            result.resources[key] = resources
        if resources is not None and first_page is None:
            continue
        if client is None:
            if resources is None:
                result.unavailable[key] = f"{why}; {client_unusable_reason}"
            else:
                result.incomplete[key] = f"only the first page was sent; {client_unusable_reason}"
            continue
        if first_page is not None:
            jobs[key] = partial(client.rest_of, first_page)  # the first page again, then the rest
            continue
        try:
            query = substitute_tokens(template, context)
        except TemplateError as error:
            query, why = None, f"{why}; {error}"
        if query is None:
            result.unavailable[key] = f"{why}; the context lacks a usable value for the query"
        elif KEY_BY_NAME[key].is_read:
            jobs[key] = partial(_read_one, client, query)
        else:
            jobs[key] = partial(client.search, query)
    results, errors = run_parallel(jobs, client.deadline, executor) if client and jobs else ({}, {})
    for key, resources in results.items():
        result.resources[key] = resources
        result.fetched.append(key)
    for key, reason in errors.items():
        (result.incomplete if key in result.resources else result.unavailable)[key] = reason
    return result


T = TypeVar("T")


def run_parallel(
    jobs: Mapping[str, Callable[[], T]], deadline: float, executor: ThreadPoolExecutor
) -> tuple[dict[str, T], dict[str, str]]:
    """Run jobs at once; return (results, errors) by job name once all finish or the deadline passes."""
    futures: dict[Future[T], str] = {executor.submit(job): name for name, job in jobs.items()}
    wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    results: dict[str, T] = {}
    errors: dict[str, str] = {}
    for future, name in futures.items():
        if not future.done():
            future.cancel()
            errors[name] = "the FHIR server did not answer within the deadline"
            continue
        try:
            results[name] = future.result()
        except FhirError as error:
            errors[name] = f"the FHIR server could not give it: {error}"
    return results, errors
