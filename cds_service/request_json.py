"""Request bodies as JSON: strict, without collector pauses; a hook call's prefetch decoded only when read.

Most hook calls an EHR sends are not about tacrolimus: they are answered from ``context`` alone, and
patient-view reads the medications before anything else. So a hook call's body is read in two steps:

1. msgspec checks the whole body as JSON in one pass in C and hands back each top-level value as raw bytes;
   everything but ``prefetch`` is then decoded with orjson (strict: UTF-8 only, no NaN or Infinity).
2. Each prefetch value stays raw bytes until ``gather`` asks for it: only then is it decoded (orjson) and
   checked against the request schema's rule for prefetch values (a FHIR resource or null). The rest of a
   100 KB-4 MB prefetch that no rule needs is never turned into Python objects. A value that is not even a
   JSON object or null is refused at once, whether it is read or not.

Nesting is bounded (issue 25): a body nested more than ``MAX_REQUEST_DEPTH`` levels, or a member other than
``prefetch`` more than ``MAX_MEMBER_DEPTH``, is refused with a 400 that names the limit. The bytes of a
prefetch value are depth-checked only when it is read (issue 24: a call answered from its context alone no
longer scans the prefetch it never decodes); every other part before it is decoded.
A prefetch resource nested deeper than ``fhir_json.MAX_RESOURCE_DEPTH`` is left out of the record and named.

A body the first step cannot read (not an object, a ``prefetch`` that is not an object) is read the plain way,
``orjson.loads`` of the whole body, so every error keeps the words it always had.
"""

from __future__ import annotations

import functools
import gc
import itertools
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import orjson

from cds_service.fhir_json import nested_deeper_than
from cds_service.protocol import ProtocolError, validate_prefetch_value

MAX_REQUEST_DEPTH = 512
"""Levels of JSON objects and arrays a request body may nest: room for a prefetch resource deep enough to be
left out and named, well within what the decoders and Python's recursion bear (a body ~990 deep gave 500)."""
MAX_MEMBER_DEPTH = 100
"""Levels a member other than ``prefetch`` (``context``, ``extension``...) may nest: it is validated and
serialised whole, and ``orjson`` refuses more than 254 levels."""
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


@functools.cache
def _openers_run(length: int) -> re.Pattern[bytes]:
    """``length`` opening brackets in a row: compiled once per limit, not once per call."""
    return re.compile(rb"[\[{]{%d}" % length)


def nested_deeper_than_bytes(data: bytes | memoryview, limit: int) -> bool:
    """Does the JSON in ``data`` nest objects and arrays more than ``limit`` levels deep? Brackets inside
    strings count too: a fast first line, not the only one (a body built to fool it meets the decoders' own
    depth limits, which give the same 400, and the member and resource checks on the decoded values).

    Asked before any decoder recurses: innermost ``[]``/``{}`` pairs are removed a level at a time (C-speed
    passes; a real body needs about ten), with a running count as a fallback for bodies built to need many.
    """
    rest = bytes(data).translate(None, _NOT_BRACKETS)
    if len(rest) <= 2 * limit:
        return False  # too few brackets to go deeper than the limit
    if _openers_run(limit + 1).search(rest):
        return True
    for level in range(16):
        if len(rest) <= 2 * (limit - level):
            return False  # too few brackets left to go deeper than the limit
        shorter = rest.replace(b"[]", b"0").replace(b"{}", b"0").replace(b"0", b"")
        if len(shorter) == len(rest):
            return False  # only unmatched brackets (from strings) are left
        rest = shorter
    return max(itertools.accumulate(rest, lambda depth, byte: depth + _STEP[byte], initial=0)) > limit - 16


def too_deep() -> ProtocolError:
    return ProtocolError(400, None, f"body is nested more than {MAX_REQUEST_DEPTH} levels deep (the limit)")


def check_depth(data: bytes) -> None:
    """ProtocolError(400) naming the limit when the body nests more than ``MAX_REQUEST_DEPTH`` levels."""
    if nested_deeper_than_bytes(data, MAX_REQUEST_DEPTH):
        raise too_deep()


def _check_member_depth(body: Mapping[str, Any]) -> None:
    for name, value in body.items():
        if name != "prefetch" and nested_deeper_than(value, MAX_MEMBER_DEPTH):
            raise ProtocolError(400, name, f"is nested more than {MAX_MEMBER_DEPTH} levels deep (the limit)")


class _CollectorPause:
    """Hold the cyclic garbage collector off while JSON is decoded (by any thread of the process).

    Decoding builds only acyclic dicts and lists, yet every threshold's worth of them (700 by default,
    100,000 in the server's workers: ``server.YOUNG_COLLECTION_THRESHOLD``) starts a collection over all the
    objects decoded so far: at 700, a large prefetch ran over a hundred collections. Threads count in and
    out, so the collector is back on as soon as no decoding is running.
    """

    def __init__(self) -> None:
        self._decoding = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self._decoding += 1
            gc.disable()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._decoding -= 1
            if self._decoding == 0:
                gc.enable()


NO_COLLECTIONS = _CollectorPause()


def parse_json(data: bytes) -> Any:
    """``data`` as strict JSON, or ProtocolError(400) with orjson's words for where it goes wrong."""
    try:
        with NO_COLLECTIONS:
            return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error):
            raise too_deep() from None
        raise ProtocolError(400, None, f"body is not valid JSON: {error}") from None


def parse_request_json(data: bytes) -> Any:
    """A request body (not a hook call) as strict JSON, nested at most ``MAX_MEMBER_DEPTH`` levels."""
    check_depth(data)
    body = parse_json(data)
    if nested_deeper_than(body, MAX_MEMBER_DEPTH):
        raise ProtocolError(400, None, f"body is nested more than {MAX_MEMBER_DEPTH} levels deep (the limit)")
    return body


class _Envelope(msgspec.Struct):
    """A hook call's top-level members (CDS Hooks 2.0 "HTTP Request"), each kept as raw JSON bytes; an empty
    ``Raw`` is an absent member. Other members are allowed and never read, so they are not kept."""

    hook: msgspec.Raw = msgspec.Raw()
    hookInstance: msgspec.Raw = msgspec.Raw()
    fhirServer: msgspec.Raw = msgspec.Raw()
    fhirAuthorization: msgspec.Raw = msgspec.Raw()
    context: msgspec.Raw = msgspec.Raw()
    extension: msgspec.Raw = msgspec.Raw()
    prefetch: dict[str, msgspec.Raw] | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_MEMBERS = tuple(name for name in _Envelope.__struct_fields__ if name != "prefetch")


UNACCOUNTED_BYTES = 1024
"""Bytes of a hook call outside its known members and prefetch values (names, punctuation, white space: ~200
in a real call) above which the whole body is depth-checked: an unknown member is skipped by the decoder,
never read, but one nested more than ``MAX_REQUEST_DEPTH`` deep is refused as it always was."""


def _check_parts_depth(data: bytes, members: dict[str, msgspec.Raw], prefetch: dict | None) -> None:
    """The depth bound without scanning the prefetch (issue 24): each member decoded now is checked, each
    prefetch value when it is read (``LazyPrefetch``), and the whole body only when it holds more than
    ``UNACCOUNTED_BYTES`` outside them. A call answered from its context alone (most calls) never pays for
    the 100 KB-4 MB prefetch it does not read; the decoders' own limits (msgspec's recursion bound, orjson's
    1024 levels) stand behind every check."""
    known = sum(len(raw) for raw in members.values()) + sum(len(raw) for raw in (prefetch or {}).values())
    if len(data) - known > UNACCOUNTED_BYTES:
        check_depth(data)
        return
    for raw in members.values():
        if len(raw) and nested_deeper_than_bytes(memoryview(raw), MAX_REQUEST_DEPTH):
            raise too_deep()


def parse_hook_call(data: bytes) -> Any:
    """A hook call's body: a dict whose ``prefetch`` (when it is an object) is a :class:`LazyPrefetch`."""
    try:
        envelope = _ENVELOPE.decode(data)
        members = {name: getattr(envelope, name) for name in _MEMBERS}
        _check_parts_depth(data, members, envelope.prefetch)
        body = {name: orjson.loads(memoryview(raw)) for name, raw in members.items() if len(raw)}
    except RecursionError:  # nested deeper than the decoder bears
        raise too_deep() from None
    except (msgspec.DecodeError, msgspec.ValidationError, orjson.JSONDecodeError):
        check_depth(data)
        body = parse_json(data)  # the plain way: the same answer, or the same error in the same words
        if isinstance(body, dict):
            _check_member_depth(body)
        return body
    _check_member_depth(body)
    if envelope.prefetch is not None:
        prefetch = body["prefetch"] = LazyPrefetch(envelope.prefetch, data)
        for key, raw in envelope.prefetch.items():
            if memoryview(raw)[:1] not in (b"{", b"n"):  # not an object or null: reading it raises the
                prefetch[key]  # error the whole request's check gives, at once, even for a key never read
    return body


class LazyPrefetch(Mapping[str, Any]):
    """The request's prefetch: its keys known at once, each value decoded and checked on first read.

    A value that is not valid JSON raises the same ProtocolError the whole body would have; one that breaks
    the schema's rule for prefetch values raises the ProtocolError that names it (``prefetch.patient``).
    """

    def __init__(self, raw: dict[str, msgspec.Raw], body: bytes):
        self._raw = raw
        self._body = body
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        raw = self._raw[key]
        if nested_deeper_than_bytes(memoryview(raw), MAX_REQUEST_DEPTH):  # checked when read (issue 24)
            raise too_deep()
        try:
            with NO_COLLECTIONS:
                value = orjson.loads(memoryview(raw))
        except orjson.JSONDecodeError:
            parse_json(self._body)  # raises with the words (and position) of the whole body
            raise ProtocolError(400, f"prefetch.{key}", "is not valid JSON") from None
        validate_prefetch_value(key, value)
        self._values[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def raw_items(self) -> Iterator[tuple[str, memoryview]]:
        """Each key with its value's JSON bytes as sent, undecoded (what ``evaluations`` keys on)."""
        return ((key, memoryview(raw)) for key, raw in self._raw.items())

    def __len__(self) -> int:
        return len(self._raw)
