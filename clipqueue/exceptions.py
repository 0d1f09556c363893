"""Exception classes, named for what went wrong.

Retries depend on the class: a ``TransientError`` (timeout, 5xx, connection
reset, storage throttling) is retried with backoff; a ``PermanentError`` (bad
range, 404, forbidden URL, invalid media) fails the job at once.
"""

from __future__ import annotations


class ClipqueueError(Exception):
    """Base class of every error clipqueue raises on purpose."""


class PermanentError(ClipqueueError):
    """Retrying cannot help: the job fails at once."""


class TransientError(ClipqueueError):
    """The same call may succeed later: the job is retried with backoff."""


class SourceNotFound(PermanentError):
    """The source answered 404 or 410 for a playlist, segment or file."""


class SourceRejected(PermanentError):
    """The source refused the request for good (401, 403, other 4xx)."""


class ForbiddenSource(PermanentError):
    """The URL is not allowed by the source policy; nothing was fetched."""


class InvalidMedia(PermanentError):
    """The source or an intermediate file is not media ffmpeg can use."""


class RangeNotInVod(PermanentError):
    """The requested time range lies outside the VOD."""


class LiveVodTimeout(PermanentError):
    """A live VOD did not reach the clip's end before the deadline."""


class SourceUnavailable(TransientError):
    """The source timed out, reset the connection or answered 5xx/429."""


class StorageUnavailable(TransientError):
    """The object store could not be reached or throttled the upload."""


class ValidationError(ClipqueueError):
    """Input to the API was rejected; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid_field"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code


class StorageRejected(PermanentError):
    """The object store refused the upload for good (no such bucket, access denied)."""
