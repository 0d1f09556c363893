"""Exception classes, named for what went wrong.

Retries depend on the class: a ``TransientError`` (timeout, 5xx, connection
reset, storage throttling) is retried with backoff; a ``PermanentError`` (bad
range, 404, forbidden URL, invalid media) fails the job at once. An
``InputError`` is a permanent error in what the clip asked for: it fails the
clip without a dead letter, since no operator can replay it into success.

Each class's ``code`` names the reason in the clip's ``failure_code`` and in metrics.
"""

from __future__ import annotations


class ClipqueueError(Exception):
    """Base class of every error clipqueue raises on purpose."""

    code = "internal_error"


class PermanentError(ClipqueueError):
    """Retrying cannot help: the job fails at once."""

    code = "permanent_error"


class InputError(PermanentError):
    """The clip's own input cannot be cut (its source, range or media): only a new request can help."""

    code = "invalid_input"


class TransientError(ClipqueueError):
    """The same call may succeed later: the job is retried with backoff."""

    code = "transient_error"


class SourceNotFound(InputError):
    """The source answered 404 or 410 for a playlist, segment or file."""

    code = "source_not_found"


class SourceRejected(InputError):
    """The source refused the request for good (401, 403, other 4xx)."""

    code = "source_rejected"


class ForbiddenSource(InputError):
    """The URL is not allowed by the source policy; nothing was fetched."""

    code = "forbidden_source"


class InvalidMedia(InputError):
    """The source or an intermediate file is not media ffmpeg can use."""

    code = "invalid_media"


class RangeNotInVod(InputError):
    """The requested time range lies outside the VOD."""

    code = "range_not_in_vod"


class LiveVodTimeout(InputError):
    """A live VOD did not reach the clip's end before the deadline."""

    code = "live_vod_timeout"


class InvalidTwitchLink(InputError):
    """A twitch.tv link that names no VOD or channel (``/directory``, a non-numeric video id)."""

    code = "invalid_twitch_link"


class TwitchVodNotFound(SourceNotFound):
    """Twitch has no such VOD: it was deleted or never existed (a null playback token)."""

    code = "vod_not_found"


class TwitchChannelOffline(InputError):
    """The Twitch channel is not live (or does not exist): it records no VOD to clip from."""

    code = "channel_offline"


class TwitchNotRecording(InputError):
    """The Twitch channel is live but keeps no VOD of this stream."""

    code = "channel_not_recording"


class TwitchRefused(PermanentError):
    """Twitch refused the service itself (client id, OAuth token, usher): an operator can fix it and replay."""

    code = "twitch_refused"


class TwitchSubscriberOnly(TwitchRefused):
    """A subscriber-only VOD and no ``TWITCH_OAUTH_TOKEN`` of a subscriber: setting one and replaying helps."""

    code = "subscriber_only"


class SourceUnavailable(TransientError):
    """The source timed out, reset the connection or answered 5xx/429."""

    code = "source_unavailable"


class StorageUnavailable(TransientError):
    """The object store could not be reached or throttled the upload."""

    code = "storage_unavailable"


class ValidationError(ClipqueueError):
    """Input to the API was rejected; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None, code: str = "invalid_field"):
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code


class StorageRejected(PermanentError):
    """The object store refused the upload for good (no such bucket, access denied)."""

    code = "storage_rejected"


class LeaseLost(ClipqueueError):
    """This worker no longer holds the job's lease: another delivery runs it, so this one stops."""

    code = "lease_lost"


class JobCanceled(LeaseLost):
    """The clip was canceled while its job ran: the job stops, removes its scratch and stores nothing."""

    code = "canceled"
