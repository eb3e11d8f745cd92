"""Errors the annotation store raises for bad input or impossible requests.

Every error is a `StoreError` (a `ValueError`) whose message names the offending field and value,
so an app can show it as is. An operation that raises has written nothing: each one runs in a
single database transaction that is rolled back on error.
"""

from __future__ import annotations


class StoreError(ValueError):
    """Base class. `field` names the input field at fault when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message if field is None else f"{field}: {message}")
        self.field = field


class NotFound(StoreError):
    """A referenced row (mention, annotator, annotation, model version, run) does not exist."""


class UnknownEntity(NotFound):
    """An entity id that is not in the knowledge-base table."""


class InvalidInput(StoreError):
    """A value of the wrong type, out of range or not one of the allowed choices."""


class InvalidSpan(InvalidInput):
    """A mention span that does not lie inside its sentence or does not match the mention text."""


class InvalidImage(InvalidInput):
    """An image that is missing, corrupt, not an image, or larger than the configured limits."""


class Conflict(StoreError):
    """A request that contradicts stored state, e.g. a request_id reused for a different submission."""


class StoreBusy(StoreError):
    """The database stayed locked through every retry (only under pathological contention).

    Raised instead of the driver's raw `OperationalError: database is locked`, after the
    transaction was rolled back: nothing was written and the call may be repeated.
    """


class Forbidden(StoreError):
    """The acting user's role (or disabled account) does not allow the operation (e.g. `resolve`
    by an annotator)."""
