"""One JSON object per log line, with the ``extra`` fields of the call: easy to ship, easy to grep.

Callers pass only PHI-free facts (ids, finding ids, counts, reasons). Nothing here adds request data.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _request_id() -> str | None:
    """The current request's id (app.py sets it), in every line logged while serving it."""
    from flask import g, has_request_context  # imported here: logs.py stays usable without Flask

    return g.get("request_id") if has_request_context() else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = _request_id()
        if request_id:
            line["request_id"] = request_id
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        try:  # orjson: a hook call's line costs a tenth of what the standard library's took
            return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")
        except TypeError:  # what orjson refuses (an integer beyond 64 bits) the standard library writes
            return json.dumps(line, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("cds_service")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
