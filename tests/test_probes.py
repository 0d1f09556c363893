"""Probes: web's /healthz and /readyz against real Redis and PostgreSQL, a worker's liveness by heartbeat."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import RedisServer, free_port, wait_until

CLIPQUEUE = str(Path(sys.executable).parent / "clipqueue")


def _probe(app, path: str = "/readyz"):
    began = time.monotonic()
    response = app.test_client().get(path)
    return response.status_code, response.get_json(), time.monotonic() - began


def test_readyz_is_200_when_redis_and_the_database_answer(service_factory):
    service = service_factory(db="postgres")
    status, body, _ = _probe(service.app)
    assert (status, body["down"]) == (200, [])
    assert body["checks"] == {"redis": {"status": "ok"}, "database": {"status": "ok"}}


def test_readyz_names_redis_when_it_is_stopped_and_healthz_stays_200(service_factory, tmp_path):
    private = RedisServer(tmp_path / "redis")
    private.start()
    service = service_factory(redis=private.url(0))
    assert _probe(service.app)[0] == 200
    private.stop()

    status, body, took = _probe(service.app)
    assert (status, body["down"]) == (503, ["redis"]), body
    assert "Connection" in body["checks"]["redis"]["error"]
    assert took < 3
    # Liveness does not depend on Redis: restarting web would not bring Redis back.
    assert _probe(service.app, "/healthz")[:2] == (200, {"status": "ok"})
    private.start()
    assert _probe(service.app)[0] == 200


def test_readyz_names_the_database_when_postgresql_is_unreachable(service_factory):
    from clipqueue import create_app

    service = service_factory()
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    app = create_app({**service.env, "DATABASE_URL": unreachable})
    status, body, took = _probe(app)
    assert (status, body["down"]) == (503, ["database"]), body
    assert body["checks"]["redis"] == {"status": "ok"}
    assert took < 3


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers: a hung Redis or PostgreSQL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


def test_readyz_answers_503_within_its_timeout_when_dependencies_hang(service_factory, silent_server):
    from clipqueue import create_app

    service = service_factory()
    app = create_app({**service.env, "REDIS_URL": f"redis://127.0.0.1:{silent_server}/0",
                      "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{silent_server}/hung"})
    status, body, took = _probe(app)
    assert (status, sorted(body["down"])) == (503, ["database", "redis"]), body
    assert took < 3.5  # PROBE_TIMEOUT_SECONDS (2) and a little


def _worker_health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLIPQUEUE, "worker-health", *args], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30)


def test_worker_health_is_0_for_a_live_worker_and_1_once_it_is_gone(service_factory, tmp_path):
    beats = tmp_path / "heartbeats"
    service = service_factory(WORKER_HEARTBEAT_DIR=str(beats), WORKER_HEARTBEAT_SECONDS="0.5")
    probe_env = {"WORKER_HEARTBEAT_DIR": str(beats), "WORKER_HEARTBEAT_MAX_AGE_SECONDS": "2"}
    assert _worker_health(probe_env).returncode == 1  # no worker has ever beaten here

    worker = service.start_worker("probed")
    time.sleep(2.5)  # longer than the max age: only a beating worker stays fresh
    alive = _worker_health(probe_env)
    assert alive.returncode == 0, alive.stderr
    assert "probed@" in alive.stdout and "alive" in alive.stdout

    worker.signal_group(signal.SIGKILL)
    worker.process.wait(10)
    gone = wait_until(lambda: (result := _worker_health(probe_env)).returncode != 0 and result, 10,
                      interval=0.5, what="worker-health to notice the killed worker")
    assert gone.returncode == 1 and "STALE" in gone.stderr


def test_links_follow_webs_port_without_public_base_url(service_factory, master_url):
    import requests

    from tests.test_scripts import procfile_process

    service = service_factory(PUBLIC_BASE_URL="")
    port = free_port()
    # As honcho runs them: web on its $PORT, the worker with a PORT of its own.
    web_env = {**service.env, "PORT": str(port), "WEB_ADDRESS": "127.0.0.1", "WEB_CONCURRENCY": "1"}
    with procfile_process("web", web_env, service.workdir / "web.log"):
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 60, what="web to listen")
        service.start_worker("links", PORT=str(port + 100))
        created = requests.post(f"http://127.0.0.1:{port}/api/v1/clips", timeout=10,
                                json={"vod_url": master_url, "start_time": 1, "end_time": 4})
        clip_url = f"http://127.0.0.1:{port}/api/v1/clips/{created.json()['clip_id']}"
        # Read through web alone: this test's in-process app is a web on another port (none).
        clip = wait_until(lambda: (c := requests.get(clip_url, timeout=5).json())["status"] != "processing"
                          and c, 120, interval=0.3, what="the clip to finish")
        assert clip["status"] == "ready", clip
        assert clip["video_url"].startswith(f"http://localhost:{port}/media/clips/"), clip["video_url"]
        served = requests.get(clip["video_url"].replace("localhost", "127.0.0.1"), timeout=10)
        assert served.status_code == 200 and served.content[4:8] == b"ftyp"


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
