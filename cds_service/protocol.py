"""CDS Hooks 2.0 wire-format checks: requests and feedback coming in, responses and discovery going out.

The JSON Schemas in ``cds_service/schemas/`` are the single statement of what is accepted; this module
compiles them once, runs them, and turns the most useful error into a message that names the field the way
a person reading the JSON would find it. Each check runs twice compiled: by jsonschema-rs (Rust, fast) to
accept a valid body, and only for a body it rejects by jsonschema (Python, far slower), whose errors word
the message; a body is refused only if jsonschema finds a problem, so the answer and its words are those of
jsonschema alone (``context.selections[0]``, ``feedback[2].outcome``). Messages never
quote the offending value, so secrets such as ``fhirAuthorization.access_token`` (and patient data) cannot
leak into responses or logs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import jsonschema_rs
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match, relevance
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).parent / "schemas"

MAX_DRAFT_ORDERS = 1000
"""Draft orders read from one request: checking each costs schema validation and drug recognition, and no
order session signs a thousand orders (a larger Bundle is refused before any of that work)."""
MAX_FEEDBACK_ITEMS = 1000
"""Feedback items per request: each is validated and stored, so a 10 MB batch would hold a thread for
seconds and flood the table; an EHR sends feedback per card, a few at a time."""
_OO_ISSUE_BY_STATUS = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 412: "incomplete"}


class ProtocolError(Exception):
    """A request the service cannot accept; ``status`` is the HTTP status to answer with."""

    status: int
    field: str | None
    """JSON path of the offending field as a user would find it, e.g. ``context.selections[0]``."""
    message: str
    issue_code: str
    """FHIR OperationOutcome issue type (``invalid``, ``required``...)."""

    def __init__(self, status: int, field: str | None, message: str, *, issue_code: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        self.issue_code = issue_code or _OO_ISSUE_BY_STATUS.get(status, "processing")

    def to_json(self) -> dict[str, Any]:
        """The project's plain error body: ``{"error": message, "field": field}``."""
        return {"error": self.message, "field": self.field}

    def to_operation_outcome(self) -> dict[str, Any]:
        """The same error as a FHIR OperationOutcome (what the 3.0 ballot asks for on non-2xx answers)."""
        issue: dict[str, Any] = {"severity": "error", "code": self.issue_code, "diagnostics": self.message}
        if self.field:
            issue["expression"] = [self.field]
        return {"resourceType": "OperationOutcome", "issue": [issue]}


# --- format checks -----------------------------------------------------------------------------------------
# jsonschema only checks "date-time" and "uri" when optional third-party packages are installed; these two
# small checkers make the behaviour explicit and dependency-free.

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_NEEDS_HOST = {"http", "https", "ws", "wss", "ftp"}


def _is_rfc3339_date_time(value: object) -> bool:
    """RFC 3339 section 5.6 date-time: a full date, a full time and a mandatory zone (Z or +hh:mm)."""
    if not isinstance(value, str):
        return True
    match = _RFC3339.match(value)
    if not match:
        return False
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    offset_hours, offset_minutes = int(match.group(10) or 0), int(match.group(11) or 0)
    if offset_hours > 23 or offset_minutes > 59:
        return False
    try:
        # A leap second (:60) is legal RFC 3339 but not representable in datetime; check it as :59.
        datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:
        return False
    return True


def _is_absolute_uri(value: object) -> bool:
    """An absolute URI (scheme required, no whitespace); web schemes must also name a host."""
    if not isinstance(value, str):
        return True
    if not _URI_SCHEME.match(value) or any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.netloc) if parts.scheme.lower() in _NEEDS_HOST else True


_FORMAT_CHECKER = FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time")(_is_rfc3339_date_time)
_FORMAT_CHECKER.checks("uri")(_is_absolute_uri)


# --- compiled validators (once, at import) -----------------------------------------------------------------


def _load_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        schemas[path.name] = schema
    return schemas


_SCHEMAS = _load_schemas()
_REGISTRY = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in _SCHEMAS.values()
)


_RS_REGISTRY = jsonschema_rs.Registry([(schema["$id"], schema) for schema in _SCHEMAS.values()])
_RS_FORMATS = {"date-time": _is_rfc3339_date_time, "uri": _is_absolute_uri}  # the same checks as above


@dataclass(frozen=True)
class _Checker:
    """One schema, compiled twice: ``fast`` says whether a body is valid, ``full`` says why it is not."""

    fast: Any
    full: Draft202012Validator

    def iter_errors(self, instance: object) -> Iterator[ValidationError]:
        if self.fast.is_valid(instance):
            return iter(())
        return self.full.iter_errors(instance)


def _compile(schema: dict[str, Any]) -> _Checker:
    fast = jsonschema_rs.Draft202012Validator(
        schema,
        registry=_RS_REGISTRY,
        formats=_RS_FORMATS,
        validate_formats=True,
        ignore_unknown_formats=True,
    )
    return _Checker(fast, Draft202012Validator(schema, registry=_REGISTRY, format_checker=_FORMAT_CHECKER))


def _compile_ref(file_name: str, pointer: str) -> _Checker:
    return _compile({"$ref": f"{_SCHEMAS[file_name]['$id']}#{pointer}"})


_REQUEST = _compile(_SCHEMAS["request.json"])
_PREFETCH_VALUE = _compile_ref("request.json", "/properties/prefetch/additionalProperties")
CONTEXT_SUFFIX = "-context.json"
_CONTEXT_BY_HOOK = {
    name.removesuffix(CONTEXT_SUFFIX): _compile(schema)
    for name, schema in sorted(_SCHEMAS.items())
    if name.endswith(CONTEXT_SUFFIX)
}
"""One context schema per hook, ``<hook>-context.json`` (a service spec names its hook's file)."""
_RESPONSE = _compile(_SCHEMAS["response.json"])
_DISCOVERY = _compile(_SCHEMAS["discovery.json"])
_FEEDBACK = _compile(_SCHEMAS["feedback.json"])
_FEEDBACK_ITEM = _compile_ref("feedback.json", "/$defs/feedbackItem")

SUPPORTED_HOOKS = frozenset(_CONTEXT_BY_HOOK)


def schema(file_name: str) -> dict[str, Any]:
    """One of the bundled schemas by file name (e.g. ``"response.json"``), for documentation or tooling."""
    return _SCHEMAS[file_name]


# --- turning a ValidationError into a readable problem ----------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


@dataclass(frozen=True)
class _Problem:
    field: str | None
    phrase: str
    missing: bool = False

    def as_line(self, root_label: str) -> str:
        return f"{self.field or root_label}: {self.phrase}"

    def sentence(self) -> str:
        return f"{self.field} {self.phrase}" if self.field else self.phrase


def _join_path(prefix: str | None, parts: Iterable[str | int]) -> str | None:
    path = prefix or ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path or None


def _missing_name(error: ValidationError, names: Iterable[str]) -> str | None:
    """The property a required/dependentRequired error is about. jsonschema yields one error per missing
    property and only names it in the message (``'hook' is a required property``), so match that prefix."""
    instance = error.instance if isinstance(error.instance, dict) else {}
    return next(
        (name for name in names if name not in instance and error.message.startswith(repr(name))), None
    )


def _phrase(error: ValidationError) -> str:
    """What is wrong, worded from the schema only (never from the instance value)."""
    custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    kind, expected = error.validator, error.validator_value
    if custom and kind != "type":
        return custom
    if kind == "type":
        wanted = [expected] if isinstance(expected, str) else [name for name in expected if name != "null"]
        return "must be " + " or ".join(_TYPE_NAMES.get(name, name) for name in wanted)
    if kind == "enum":
        return "must be one of: " + ", ".join(str(value) for value in expected)
    if kind == "const":
        return f"must be {json.dumps(expected)}"
    if kind == "minItems":
        return "must not be empty" if expected == 1 else f"must have at least {expected} items"
    if kind == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters"
    if kind == "maxLength":
        return f"must be at most {expected} characters"
    if kind == "minimum":
        return f"must be at least {expected}"
    if kind == "format":
        return {
            "date-time": "must be an RFC 3339 date-time with a time zone, e.g. 2021-12-11T10:05:31Z",
            "uri": "must be an absolute URL",
        }.get(expected, f"must be a valid {expected}")
    if kind == "pattern":
        return "has an invalid format"
    return "is not valid here"


def _problem(error: ValidationError, prefix: str | None) -> _Problem:
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = _missing_name(error, error.validator_value)
        if missing is not None:
            custom = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
            return _Problem(_join_path(prefix, [*path, missing]), custom or "is required", missing=True)
    if error.validator == "dependentRequired":
        for trigger, needed in error.validator_value.items():
            missing = _missing_name(error, needed) if trigger in error.instance else None
            if missing is not None:
                field = _join_path(prefix, [*path, missing])
                return _Problem(field, f"is required when {trigger} is present", missing=True)
    return _Problem(_join_path(prefix, path), _phrase(error))


def _usefulness(error: ValidationError) -> tuple[Any, ...]:
    """best_match's ranking (shallowest error first), except that a plainly missing or wrong field beats a
    conditional (if/then) rule at the same depth: "hook is required" before "fhirServer is required when"."""
    conditional = any(step in ("then", "else") for step in error.absolute_schema_path)
    depth, *rest = relevance(error)
    return (depth, not conditional, *rest)


def _best_problem(validator: _Checker, instance: object, prefix: str | None) -> _Problem | None:
    error = best_match(validator.iter_errors(instance), key=_usefulness)
    return None if error is None else _problem(error, prefix)


def _path_sort_key(error: ValidationError) -> list[tuple[int, int | str]]:
    return [(0, part) if isinstance(part, int) else (1, part) for part in error.absolute_path]


def _all_problems(validator: _Checker, instance: object, prefix: str | None) -> Iterator[_Problem]:
    seen = set()
    for error in sorted(validator.iter_errors(instance), key=_path_sort_key):
        problem = _problem(error, prefix)
        if problem not in seen:
            seen.add(problem)
            yield problem


def _raise_400(problem: _Problem) -> NoReturn:
    issue_code = "required" if problem.missing else None
    raise ProtocolError(400, problem.field, problem.sentence(), issue_code=issue_code)


# --- public checks -----------------------------------------------------------------------------------------


def validate_request(body: object, expected_hook: str) -> None:
    """Accept a service call body, or raise ProtocolError(400) naming the one field to fix first.

    Order: the envelope (hook, hookInstance, fhirServer/fhirAuthorization, context, prefetch), then whether
    the hook is the one this service was registered for, then the hook's context.
    """
    context_validator = _CONTEXT_BY_HOOK.get(expected_hook)
    if context_validator is None:
        supported = ", ".join(sorted(SUPPORTED_HOOKS))
        raise ValueError(f"no context schema for hook {expected_hook!r} (supported: {supported})")
    if not isinstance(body, dict):
        raise ProtocolError(400, None, "request body must be a JSON object")
    context = body.get("context")
    for name in ("draftOrders", "medications"):
        orders = context.get(name) if isinstance(context, dict) else None
        entries = orders.get("entry") if isinstance(orders, dict) else None
        if isinstance(entries, list) and len(entries) > MAX_DRAFT_ORDERS:
            message = (
                f"holds {len(entries)} entries; this service reads at most {MAX_DRAFT_ORDERS} draft orders"
            )
            raise ProtocolError(400, f"context.{name}.entry", message)
    prefetch = body.get("prefetch")
    if isinstance(prefetch, Mapping) and not isinstance(prefetch, dict):
        # a prefetch read lazily (request_json.LazyPrefetch): each value is checked when it is first read
        body = {key: value for key, value in body.items() if key != "prefetch"}
    problem = _best_problem(_REQUEST, body, None)
    if problem:
        _raise_400(problem)
    if body["hook"] != expected_hook:
        received = json.dumps(body["hook"][:64])
        message = f"hook must be {json.dumps(expected_hook)} (this service's hook), not {received}"
        raise ProtocolError(400, "hook", message)
    problem = _best_problem(context_validator, body["context"], "context")
    if problem:
        _raise_400(problem)


def validate_prefetch_value(key: str, value: object) -> None:
    """Accept one prefetch value (a FHIR resource or null), or raise ProtocolError(400) naming it, in the
    words the whole request's check would have used."""
    problem = _best_problem(_PREFETCH_VALUE, value, _join_path("prefetch", [key]))
    if problem:
        _raise_400(problem)


def validate_feedback(body: object) -> None:
    """Accept the feedback envelope ``{"feedback": [...]}``; items are checked one by one with
    :func:`feedback_item_errors` so that a single bad item does not discard the rest of a batch."""
    if not isinstance(body, dict):
        raise ProtocolError(400, None, "feedback body must be a JSON object")
    items = body.get("feedback")
    if isinstance(items, list) and len(items) > MAX_FEEDBACK_ITEMS:
        message = f"holds {len(items)} items; send at most {MAX_FEEDBACK_ITEMS} per request"
        raise ProtocolError(400, "feedback", message)
    envelope_errors = (err for err in _FEEDBACK.iter_errors(body) if len(err.absolute_path) < 2)
    error = best_match(envelope_errors, key=_usefulness)
    if error is not None:
        _raise_400(_problem(error, None))


def feedback_item_errors(item: object, *, index: int | None = None) -> str | None:
    """None if one feedback item is valid, else ``"field: message"``.

    With ``index`` the field is prefixed as the client sees it (``feedback[2].outcome``); without it the
    field is relative to the item (``outcome``).
    """
    prefix = f"feedback[{index}]" if index is not None else None
    problem = _best_problem(_FEEDBACK_ITEM, item, prefix)
    return None if problem is None else problem.as_line(root_label="feedback item")


def check_response(body: object) -> list[str]:
    """Every problem in a service response, as ``"field: message"`` lines (empty list = valid)."""
    return [problem.as_line("response") for problem in _all_problems(_RESPONSE, body, None)]


def check_discovery(body: object) -> list[str]:
    """Every problem in a discovery document, as ``"field: message"`` lines (empty list = valid)."""
    return [problem.as_line("discovery") for problem in _all_problems(_DISCOVERY, body, None)]


def check_feedback(body: object) -> list[str]:
    """Every problem in a whole feedback body, as ``"field: message"`` lines (empty list = valid)."""
    return [problem.as_line("feedback body") for problem in _all_problems(_FEEDBACK, body, None)]
