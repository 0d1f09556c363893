"""Live job events over HTTP: Server-Sent Events and a WebSocket, on the API blueprint.

The views check the clip (``404`` as JSON before any stream starts), then
hand the connection a generator of :func:`clipqueue.events.watch`; they keep
no database session or app context while they stream. They need a server
that holds idle connections cheaply: the Procfile's ``web`` line runs
gunicorn's gevent worker.
"""

from __future__ import annotations

from flask import Response, current_app, request

from clipqueue.api import _clip_not_found, _find_clip, bp, clip_uuid, error_response
from clipqueue.events import event_hub, valid_event_id, watch
from clipqueue.jobs import get_redis
from clipqueue.keys import job_key
from clipqueue.models import STATUS_PROCESSING, db
from clipqueue.openapi import operation

EVENT_STREAM = "text/event-stream"
# How soon an EventSource reconnects after the stream drops (it then sends Last-Event-ID).
RETRY_MILLISECONDS = 3000

WEBSOCKET_CLOSE_WAIT_SECONDS = 2.0

LAST_EVENT_ID_PARAMETER = {
    "name": "Last-Event-ID", "in": "header", "required": False,
    "description": "Resume after this event id (the `id:` of the last event received): "
                   "every change since is sent first. `?last_event_id=` does the same.",
    "schema": {"type": "string", "pattern": r"^\d+-\d+$"},
}


def _last_event_id() -> str | None:
    return valid_event_id(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))


def _watcher_start(clip_id: str | None):
    """The watch of ``clip_id`` (None: every clip), or an error response if there is nothing to watch."""
    if clip_id is not None:
        key = clip_uuid(clip_id)
        clip = _find_clip(key)
        if clip is None:
            return None, _clip_not_found(clip_id)
        finished = clip.status != STATUS_PROCESSING
        db.session.remove()  # no connection held for the stream's life
        if finished and get_redis().exists(job_key(key)) == 0:
            return None, error_response(404, "job_not_found",
                                        f"no job metadata for clip {clip_id!r} (expired)", "clip_id")
        clip_id = key
    settings = current_app.config["CLIPQUEUE"]
    hub = event_hub(current_app)
    sub, events = watch(hub, get_redis(), clip_id, _last_event_id(), settings.events_heartbeat_seconds)
    return (hub, sub, events), None


def _sse(events):
    # Sent once the watcher is subscribed: a client may count on every change from here on.
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    for event in events:
        yield ": ping\n\n" if event is None else event.sse


def _sse_response(watcher) -> Response:
    hub, sub, events = watcher
    response = Response(_sse(events), mimetype=EVENT_STREAM)
    # A client gone before its first event leaves the events unstarted: unsubscribe here too.
    response.call_on_close(lambda: hub.unsubscribe(sub))
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


STREAM_RESPONSES = {
    200: ("the job's metadata (as getJob answers it) in each event's `data:`, its id in `id:`, "
          "at once and on every change; `: ping` comments while idle", EVENT_STREAM),
}


@bp.get("/clips/<clip_id>/events")
@operation("watchClip", {
    **STREAM_RESPONSES,
    404: ("no such clip, or a finished clip whose job metadata expired", None),
}, headers=(LAST_EVENT_ID_PARAMETER,))
def clip_events(clip_id: str):
    """The job's changes as Server-Sent Events, ending after its final state (completed, failed, canceled)."""
    watcher, error = _watcher_start(clip_id)
    return error or _sse_response(watcher)


@bp.get("/events")
@operation("watchClips", dict(STREAM_RESPONSES), headers=(LAST_EVENT_ID_PARAMETER,), private=True)
def all_events():
    """Every clip's job changes as Server-Sent Events (each event's data has its clip_id), from now on.

    It carries every clip's source URL, so with ``API_TOKENS`` set it needs the token, as dead letters do.
    """
    watcher, _ = _watcher_start(None)
    return _sse_response(watcher)


# websocket=True: werkzeug routes only upgrade requests here, and answers others 400.
@bp.get("/clips/<clip_id>/ws", websocket=True)
@operation("watchClipWebSocket", {
    101: ("a WebSocket: each text message is {\"id\": event id, \"data\": job metadata}, at once and on "
          "every change; closed (1000) after the final state", ""),
    400: ("not a WebSocket upgrade request", None),
    404: ("no such clip, or a finished clip whose job metadata expired", None),
}, headers=({**LAST_EVENT_ID_PARAMETER, "name": "last_event_id", "in": "query"},))
def clip_websocket(clip_id: str):
    """The same events as ``/events`` over a WebSocket."""
    from simple_websocket import ConnectionClosed, Server

    watcher, error = _watcher_start(clip_id)
    if error:
        return error
    hub, sub, events = watcher
    settings = current_app.config["CLIPQUEUE"]
    try:
        ws = Server.accept(request.environ, ping_interval=settings.events_heartbeat_seconds)
    except BaseException:
        hub.unsubscribe(sub)
        raise
    try:
        for event in events:
            if not ws.connected:
                break
            if event is not None:
                ws.send(event.message)
        ws.close(1000, "final state")
        # Wait (briefly) for the client's reply to the close: a socket closed with its reply
        # unread is reset, and a client may then lose the last messages still in its buffer.
        ws.thread.join(WEBSOCKET_CLOSE_WAIT_SECONDS)
    except ConnectionClosed:
        pass
    finally:
        events.close()
        hub.unsubscribe(sub)
    return _WebSocketDone(ws.mode)


class _WebSocketDone(Response):
    """Tell the server the connection was taken over (as Flask-Sock does for each server)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def __call__(self, *args, **kwargs):
        if self.mode == "gunicorn":
            raise StopIteration()
        if self.mode == "werkzeug":
            raise ConnectionError()
        return []
