"""Signed webhooks, at least once: a real receiver on loopback that fails, goes away and comes back."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.services import REPO, RedisServer, free_port, wait_until

SECRET = "whsec-test"
CLIPQUEUE = str(Path(sys.executable).parent / "clipqueue")
# Fast retries: attempts after 0.2, 0.4, 0.8 s..., capped at 1 s; beat's sweep every second.
FAST_WEBHOOKS = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_BACKOFF_SECONDS": "0.2",
    "WEBHOOK_BACKOFF_MAX_SECONDS": "1",
    "WEBHOOK_SWEEP_SECONDS": "1",
    "WEBHOOK_TIMEOUT_SECONDS": "3",
}


def readme_verifier():
    """The receiver-side verification snippet of README.md, run as written."""
    text = (REPO / "README.md").read_text()
    snippet = re.search(r"<!-- verify-webhook -->\s*```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace["verify_signature"]


class Receiver:
    """A webhook receiver on loopback: answers ``fail_first`` requests with 503, can go away and come back.

    ``redirect_first`` requests are answered 302 to ``/elsewhere`` (which must never be asked).
    """

    def __init__(self, fail_first: int = 0, redirect_first: int = 0):
        self.port = free_port()
        self.fail_first = fail_first
        self.redirect_first = redirect_first
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    if receiver.redirect_first > 0:
                        receiver.redirect_first -= 1
                        self.send_response(302)
                        self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    failing = receiver.fail_first > 0
                    receiver.fail_first -= failing
                answer = b"down for maintenance " * 50 if failing else b"ok"
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> list[tuple[dict[str, str], dict]]:
        with self.lock:
            return [(headers, json.loads(body)) for _path, headers, body in self.requests]


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**options) -> Receiver:
        made.append(Receiver(**options).start())
        return made[-1]

    yield make
    for item in made:
        item.stop()


def deliveries(service, status: str | None = None, token: str | None = None) -> list[dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = service.client.get("/api/v1/webhooks/deliveries" + (f"?status={status}" if status else ""),
                                  headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["deliveries"]


def test_ready_event_is_signed_and_resent_with_the_same_id_until_a_receiver_that_failed_and_went_away_answers(
        service_factory, receiver, master_url):
    hooks = receiver(fail_first=2)
    service = service_factory(WEBHOOK_URL=hooks.url, **FAST_WEBHOOKS)
    service.start_worker(beat=True)
    created = service.create_clip(vod_url=master_url, start_time=10, end_time=12, mode="copy")
    clip_id = created.get_json()["clip_id"]
    assert service.wait_for_clip(clip_id)["status"] == "ready"
    wait_until(lambda: len(hooks.requests) >= 2, 20, what="two refused attempts")
    hooks.stop()  # the receiver goes away: connections are refused for a while
    wait_until(lambda: deliveries(service)[0]["attempts"] >= 4, 20, what="attempts while it is away")
    pending = deliveries(service, "pending")
    assert len(pending) == 1 and "ConnectionError" in pending[0]["last_error"]
    hooks.start()
    wait_until(lambda: deliveries(service, "delivered"), 20, what="the delivery once the receiver is back")

    verify_signature = readme_verifier()
    received = hooks.events()
    assert len(received) >= 3
    assert {event["id"] for _headers, event in received} == {received[0][1]["id"]}
    for _path, headers, raw in hooks.requests:
        assert verify_signature(SECRET, headers["Clipqueue-Signature"], raw)
        assert not verify_signature("another secret", headers["Clipqueue-Signature"], raw)
        assert not verify_signature(SECRET, headers["Clipqueue-Signature"], raw + b" ")
    headers, event = received[-1]
    assert set(event) == {"id", "type", "created_at", "data"} and event["type"] == "clip.ready"
    assert event["data"]["clip_id"] == clip_id and event["data"]["status"] == "ready"
    assert event["data"]["video_url"].endswith(f"clips/{clip_id}.mp4")
    delivered = deliveries(service, "delivered")[0]
    assert delivered["event_id"] == event["id"] and delivered["last_status_code"] == 200
    assert delivered["attempts"] > len(received)  # the refused connections count as attempts too
    counted = metric_samples(service, "clipqueue_webhook_deliveries_total")
    assert counted[("outcome", "delivered")] == 1 and counted[("outcome", "failed")] == delivered["attempts"] - 1


def test_pending_delivery_survives_a_sigkilled_worker_and_a_redis_restart(
        service_factory, receiver, tmp_path):
    hooks = receiver()
    hooks.stop()  # away from the start
    private = RedisServer(tmp_path / "redis")  # no persistence: a restart loses every message
    private.start()
    try:
        service = service_factory(db="postgres", redis=private.url(0), WEBHOOK_URL=hooks.url,
                                  **{**FAST_WEBHOOKS, "WEBHOOK_BACKOFF_SECONDS": "2",
                                     "WEBHOOK_BACKOFF_MAX_SECONDS": "2"})
        victim = service.start_worker(queues="clipqueue_control")
        clip_id = service.create_clip(vod_url="http://127.0.0.1:9/v.m3u8", start_time=1,
                                      end_time=3).get_json()["clip_id"]
        assert service.client.post(f"/api/v1/clips/{clip_id}/cancel").status_code == 202
        wait_until(lambda: deliveries(service)[0]["attempts"] >= 1, 20, what="a first, refused attempt")
        # The next attempt's message is held by this worker (a countdown): kill it, then lose Redis's memory.
        victim.signal_group(signal.SIGKILL)
        victim.process.wait(10)
        private.stop()
        private.start()
        hooks.start()
        service.start_worker(name="survivor", queues="clipqueue_control", beat=True)
        wait_until(lambda: hooks.requests, 30, what="the delivery after the kill and the restart")
    finally:
        private.stop()
    event = hooks.events()[0][1]
    assert event["type"] == "clip.canceled" and event["data"]["clip_id"] == clip_id
    wait_until(lambda: deliveries(service, "delivered"), 10, what="the delivery recorded")
    assert deliveries(service, "delivered")[0]["event_id"] == event["id"]


def test_callback_url_on_a_forbidden_address_is_refused_at_create(service_factory):
    service = service_factory(ALLOW_PRIVATE_SOURCES="false")
    response = service.create_clip(vod_url="http://93.184.216.34/v.m3u8", start_time=1, end_time=3,
                                   callback_url="http://169.254.169.254/latest/meta-data")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["field"], error["code"]) == ("callback_url", "forbidden_source")
    response = service.create_clip(vod_url="http://93.184.216.34/v.m3u8", start_time=1, end_time=3,
                                   callback_url="ftp://example.com/hooks")
    assert response.status_code == 400 and response.get_json()["error"]["field"] == "callback_url"


def test_callback_url_gets_the_clips_events_and_a_redirect_is_a_failed_attempt_not_followed(
        service_factory, receiver):
    hooks = receiver(redirect_first=1)
    # Loopback is admitted for this one network only, as an operator would admit an internal receiver.
    service = service_factory(ALLOW_PRIVATE_SOURCES="false", ALLOWED_PRIVATE_NETWORKS="127.0.0.0/8",
                              **FAST_WEBHOOKS)
    service.start_worker(queues="clipqueue_control")
    created = service.create_clip(vod_url="http://93.184.216.34/v.m3u8", start_time=1, end_time=3,
                                  callback_url=hooks.url)
    assert created.status_code == 201, created.get_json()
    clip = created.get_json()
    assert clip["callback_url"] == hooks.url
    assert service.client.post(f"/api/v1/clips/{clip['clip_id']}/cancel").status_code == 202
    wait_until(lambda: deliveries(service, "delivered"), 20, what="the callback delivery")
    paths = [path for path, _headers, _body in hooks.requests]
    assert paths == ["/hooks", "/hooks"]  # the 302 was not followed to /elsewhere
    delivered = deliveries(service, "delivered")[0]
    assert delivered["target"] == "callback" and delivered["attempts"] == 2
    assert readme_verifier()(SECRET, hooks.requests[1][1]["Clipqueue-Signature"], hooks.requests[1][2])


def test_operator_sees_failed_deliveries_and_retries_them_by_api_and_cli(service_factory, receiver):
    hooks = receiver()
    hooks.stop()
    # Attempts stop after about a second: the delivery is given up quickly.
    service = service_factory(WEBHOOK_URL=hooks.url, API_TOKENS="ops-token",
                              **{**FAST_WEBHOOKS, "WEBHOOK_RETRY_HOURS": str(1 / 3600)})
    service.start_worker(queues="clipqueue_control")
    auth = {"Authorization": "Bearer ops-token"}
    ids = [service.client.post("/api/v1/clips", json={"vod_url": "http://127.0.0.1:9/v.m3u8", "start_time": 1,
                                                      "end_time": 3}, headers=auth).get_json()["clip_id"]
           for _ in range(2)]
    for clip_id in ids:
        assert service.client.post(f"/api/v1/clips/{clip_id}/cancel", headers=auth).status_code == 202
    wait_until(lambda: len(deliveries(service, "failed", token="ops-token")) == 2, 30, what="given up")
    assert service.client.get("/api/v1/webhooks/deliveries").status_code == 401
    failed = deliveries(service, "failed", token="ops-token")
    assert {item["clip_id"] for item in failed} == set(ids)
    assert all(item["attempts"] >= 1 and item["next_attempt_at"] is None for item in failed)

    env = {"PATH": "/usr/bin:/bin", **service.env}
    listed = subprocess.run([CLIPQUEUE, "webhooks", "list", "--status", "failed"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == {item["id"] for item in failed}

    hooks.start()
    retried = service.client.post(f"/api/v1/webhooks/deliveries/{failed[0]['id']}/retry", headers=auth)
    assert retried.status_code == 202 and retried.get_json()["status"] == "pending"
    result = subprocess.run([CLIPQUEUE, "webhooks", "retry", failed[1]["id"]], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "retried" in result.stdout, result.stderr
    wait_until(lambda: len(deliveries(service, "delivered", token="ops-token")) == 2, 20, what="retried")
    assert {event["id"] for _headers, event in hooks.events()} == {item["event_id"] for item in failed}
    again = service.client.post(f"/api/v1/webhooks/deliveries/{failed[0]['id']}/retry", headers=auth)
    assert again.status_code == 409
    missing = service.client.post(f"/api/v1/webhooks/deliveries/{'0' * 32}/retry", headers=auth)
    assert missing.status_code == 404


def test_webhook_url_without_a_secret_is_refused_at_startup():
    from clipqueue.config import Settings

    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        Settings.from_env({"WEBHOOK_URL": "https://hooks.example/clipqueue"})


def metric_samples(service, name: str) -> dict[tuple, float]:
    """One metric's samples as ``/metrics`` reads them, by their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = service.client.get("/metrics").get_data(as_text=True)
    return {tuple(item for label in sample.labels.items() for item in label): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name}
