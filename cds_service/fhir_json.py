"""Typed reads of raw FHIR JSON that never raise on a value of the wrong type.

Resources reach the service from EHRs and FHIR servers it does not control, and much of the record is read on
raw JSON before (or instead of) validation. Every such read goes through these accessors, so a value of the
wrong JSON type (``"status": {}``, ``"coding": true``, ``"entry": 1.5``) reads as absent instead of raising:
the resource is then skipped or fails validation and is named on the card, never a 5xx.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

EMPTY: Mapping[str, Any] = MappingProxyType({})


def is_object(value: Any) -> bool:
    """Is ``value`` a JSON object? Parsed JSON is a dict, so that is checked first: the ABC check behind
    ``isinstance(value, Mapping)`` costs several times more, and it runs for every
    resource and element of a large record."""
    return type(value) is dict or isinstance(value, Mapping)


def obj(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if is_object(value) else EMPTY


def objs(value: Any) -> list[Mapping[str, Any]]:
    """The JSON objects in ``value`` if it is an array (other items dropped), else none."""
    return [item for item in value if is_object(item)] if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """``value`` if it is a string, else None."""
    return value if isinstance(value, str) else None


def path(value: Any, *keys: str) -> Any:
    """``value[k1][k2]...`` through JSON objects only; None once a step is not an object or is absent."""
    for key in keys:
        if not is_object(value):
            return None
        value = value.get(key)
    return value


class MalformedBundle(ValueError):
    """A Bundle whose ``entry``/``link`` is not an array of objects, or an entry whose resource is not one."""


def bundle_entries(bundle: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The resources of a Bundle's entries; MalformedBundle when the Bundle's shape is wrong.

    An entry without a resource is allowed (FHIR has such entries) and skipped; an ``entry`` that is not an
    array, an entry that is not an object or a ``resource`` that is not an object makes the whole Bundle
    untrustworthy: which of its resources went missing cannot be told.
    """
    entries = bundle.get("entry")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise MalformedBundle("Bundle.entry is not an array")
    resources = []
    for index, entry in enumerate(entries):
        if not is_object(entry):
            raise MalformedBundle(f"Bundle.entry[{index}] is not an object")
        resource = entry.get("resource")
        if resource is None:
            continue
        if not is_object(resource):
            raise MalformedBundle(f"Bundle.entry[{index}].resource is not an object")
        resources.append(resource)
    return resources


def bundle_links(bundle: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    links = bundle.get("link")
    if links is not None and not isinstance(links, list):
        raise MalformedBundle("Bundle.link is not an array")
    return objs(links)


MAX_RESOURCE_DEPTH = 64
"""A resource nested deeper than this is left out and named: no real FHIR resource comes near it, and
validating one 250 levels deep exhausts Python's recursion (issue 25)."""


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Does ``value`` hold objects or arrays more than ``limit`` levels deep? Without recursion: it is asked
    exactly because ``value`` may be too deep to recurse into."""
    level, depth = [value], 0
    while True:
        inner: list[Any] = []
        for item in level:
            if type(item) is dict or isinstance(item, Mapping):
                inner.extend(item.values())
            elif isinstance(item, list):
                inner.extend(item)
            else:
                continue
            if depth == limit:
                return True
        if not inner:
            return False
        depth += 1
        level = inner
