"""Gather the patient's resources for one hook call: prefetch first, then the FHIR server for the rest.

Every prefetch state of CDS Hooks 2.0 is handled (compare HAPI FHIR's CDS Hooks module):

- key absent: the client did not or could not fulfil it: fetch it;
- key ``null``: the query ran and found nothing: no data, nothing to fetch;
- an OperationOutcome (alone, or as the Bundle's only content): the client hit an error: fetch it;
- a Bundle with a ``next`` link: the rest of the pages are fetched;
- anything else malformed: treated as absent.

All fetches of a request run in parallel under one deadline, on the threads of their FHIR server
(``ServerExecutors``): a slow server can hold only its own few threads, never those of the others. A key that
still cannot be had is ``unavailable``, with a reason that is safe to log and to show; a key with only some of
its pages is ``incomplete``, and the pages had are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar, cast

from cds_service.fhir_client import (
    FhirClient,
    FhirError,
    Incomplete,
    bundle_resources,
    next_link,
    origin,
    too_many,
)
from cds_service.fhir_json import MalformedBundle, obj
from cds_service.prefetch import KEY_BY_NAME, TemplateError, substitute_tokens

log = logging.getLogger("cds_service.gather")

GRACE_SECONDS = 0.25
"""How long after the deadline the answer waits for fetches the watchdog is cutting (to keep their pages)."""

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

    def merged(self, other: Gathered) -> Gathered:
        """Both gatherings as one (patient-view gathers the medications first, the rest only if needed)."""
        return Gathered(
            {**self.resources, **other.resources},
            {**self.unavailable, **other.unavailable},
            {**self.incomplete, **other.incomplete},
            [*self.fetched, *other.fetched],
        )


class ServerExecutors:
    """A few threads per FHIR server (scheme and host), made when first needed, the least used dropped.

    Calls to one server beyond ``threads`` wait in its queue; calls to other servers never wait behind them.
    """

    def __init__(self, threads: int = 8, max_servers: int = 32):
        self.threads = threads
        self.max_servers = max_servers
        self._pools: OrderedDict[tuple[str, str], ThreadPoolExecutor] = OrderedDict()
        self._lock = threading.Lock()

    def for_url(self, url: str) -> ThreadPoolExecutor:
        key = origin(url)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"fhir-{key[1][:40]}")
                self._pools[key] = pool
                if len(self._pools) > self.max_servers:  # its running calls end by their deadline
                    self._pools.popitem(last=False)[1].shutdown(wait=False)
            self._pools.move_to_end(key)
            return pool

    def shutdown(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
            self._pools.clear()


def _is_outcome(value: Mapping) -> bool:
    if value.get("resourceType") == "OperationOutcome":
        return True
    # Some clients wrap the error in a Bundle that holds nothing but OperationOutcomes.
    entries = value.get("entry")
    return (
        value.get("resourceType") == "Bundle"
        and isinstance(entries, list)
        and bool(entries)
        and all(obj(obj(e).get("resource")).get("resourceType") == "OperationOutcome" for e in entries)
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
    kind = value.get("resourceType")
    shown = repr(kind)[:40]
    try:
        if spec.is_read:
            if kind == spec.resource_type:
                return [dict(value)], None, None
            if kind == "Bundle":  # some clients answer a read with a searchset
                found = [
                    r for r in bundle_resources(dict(value)) if r.get("resourceType") == spec.resource_type
                ]
                return found[:1], None, None
            return None, None, f"prefetch holds a {shown}, not a {spec.resource_type}"
        if kind != "Bundle":
            return None, None, f"prefetch holds a {shown}, not a Bundle"
        # Included resources (a Medication next to its MedicationRequest) are kept: they resolve references.
        return bundle_resources(dict(value)), (dict(value) if next_link(dict(value)) else None), None
    except MalformedBundle as error:
        return None, None, f"prefetch Bundle is malformed ({error})"


def gather(
    prefetch: Mapping | None,
    templates: Mapping[str, str],
    context: Mapping,
    client: FhirClient | None,
    executors: ServerExecutors,
    client_unusable_reason: str = "no fhirServer with fhirAuthorization in the request",
    max_resources: int = 50_000,
) -> Gathered:
    """Resources per prefetch key; what the prefetch lacks is fetched in parallel within the deadline.

    A key holds at most ``max_resources`` resources (in the order sent: the templates ask newest first);
    beyond that it is incomplete and says so.
    """
    prefetch = prefetch if isinstance(prefetch, Mapping) else {}
    result = Gathered()
    jobs: dict[str, Callable[[], list[dict]]] = {}
    for key, template in templates.items():
        resources, first_page, why = _from_prefetch(key, prefetch.get(key, _ABSENT))
        if resources is not None and len(resources) > max_resources:
            resources, first_page = resources[:max_resources], None
            result.incomplete[key] = f"the prefetch held {too_many(max_resources)}"
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
    if not jobs or client is None:
        return result
    results, errors = run_parallel(jobs, client.deadline, executors.for_url(client.base_url))
    for key, resources in results.items():
        result.resources[key] = resources
        result.fetched.append(key)
    for key, reason in errors.items():
        (result.incomplete if key in result.resources else result.unavailable)[key] = reason
    return result


def _read_one(client: FhirClient, query: str) -> list[dict]:
    return [r for r in [client.read(query)] if r is not None]


T = TypeVar("T")


def run_parallel(
    jobs: Mapping[str, Callable[[], T]], deadline: float, executor: ThreadPoolExecutor
) -> tuple[dict[str, T], dict[str, str]]:
    """Run jobs at once; return (results, errors) by job name once all finish or the deadline passes.

    A job that ends ``Incomplete`` gives both: its partial result and the reason it is partial.
    """
    futures: dict[Future[T], str] = {executor.submit(job): name for name, job in jobs.items()}
    wait(futures, timeout=max(0.0, deadline - time.monotonic()) + GRACE_SECONDS)
    results: dict[str, T] = {}
    errors: dict[str, str] = {}
    for future, name in futures.items():
        if not future.done():
            future.cancel()
            errors[name] = "the FHIR server did not answer within the deadline"
            continue
        try:
            results[name] = future.result()
        except Incomplete as error:
            results[name] = cast(T, error.resources)  # only list-returning fetches raise Incomplete
            errors[name] = f"only part of it could be fetched: {error}"
        except FhirError as error:
            errors[name] = f"the FHIR server could not give it: {error}"
        except Exception:  # a bug met by hostile data: this key is lost, never the whole answer
            log.exception("unexpected error while fetching", extra={"key": name})
            errors[name] = "the FHIR server's answer could not be read"
    return results, errors
