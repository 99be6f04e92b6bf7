"""Log records that say which request they belong to, as text or as one JSON object per line.

A request's id (its `X-Request-ID`, or a new one) is held in a context variable for as long as
the request runs, in its own thread and in the batch-job threads it hands work to; a filter puts
it on every record, so every line a request causes carries it, whoever logs it. Lines from the
model's batcher thread serve several requests at once and carry none.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s:%(request_tag)s %(message)s"
# What an incoming X-Request-ID may hold (anything else is replaced): log and header safe.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def incoming_or_new(header: str | None) -> str:
    """The caller's request id when it is a sane token, else a new random one."""
    if header and _VALID_ID.match(header):
        return header
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record: `request_id` (None outside a request) and
    `request_tag` (" [id]" or "", for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        record.request_id = rid
        record.request_tag = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (LOG_FORMAT=json)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(stream, fmt: str = "text") -> logging.Handler:
    """A handler writing `fmt` (LOG_FORMATS) to `stream`, with request ids."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    return handler
