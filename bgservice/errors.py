"""Typed errors the core raises; API.py maps each to its status code in one handler."""
from __future__ import annotations


class ServiceError(Exception):
    """An error whose message is safe to show the caller (no paths of this host, no traceback)."""

    status = 500

    def __init__(self, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404


class TooLarge(ServiceError):
    status = 413


class NotAnImage(ServiceError):
    status = 422


class Unavailable(ServiceError):
    """Not ready yet, or overloaded: the caller should retry after `retry_after` seconds.
    `reason` (REFUSAL_REASONS) is what the metrics count it under."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5, *, reason: str):
        super().__init__(message, retry_after=retry_after)
        assert reason in REFUSAL_REASONS, reason
        self.reason = reason


# Why a request got 503: the model's queue is full, the worker admits no more requests, the
# memory budget has no room, the model is still loading or has failed, it did not answer in time,
# or the worker is stopping.
REFUSAL_REASONS = ("queue_full", "busy", "memory_budget", "not_ready", "failed", "timeout",
                   "draining")


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class Conflict(ServiceError):
    status = 409


class UnsupportedMediaType(ServiceError):
    status = 415


class InsufficientStorage(ServiceError):
    status = 507
