"""Fixtures that start the real services: Redis, PostgreSQL, an S3 API, a VOD server, Celery workers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from tests.services import REPO, BeatProcess, RedisServer, WorkerProcess, free_port, postgres_database, wait_until

# boto3 in the tests and in the workers talks to the local S3 API server only.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(AWS_ENV)

CLIP_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of its own for each test (the shared server has 16)."""
    import redis

    url = redis_server.url(next(_redis_dbs))
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 API over HTTP (moto's server mode)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def vod_dir(tmp_path_factory) -> Path:
    """A 60 s HLS VOD with a master playlist, two variants named for their heights, 10 s segments."""
    from samplevod.vod import generate_hls_vod

    root = tmp_path_factory.mktemp("vod")
    variants = (("360p", 640, 360, 800_000), ("160p", 284, 160, 250_000))
    generate_hls_vod(root / "hls", duration=60, segment_seconds=10, variants=variants)
    return root


@pytest.fixture(scope="session")
def vod_server(vod_dir: Path):
    from samplevod.server import serve_directory

    server = serve_directory(vod_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def master_url(vod_server) -> str:
    return f"{vod_server.url}/hls/master.m3u8"


@dataclass
class Service:
    """One deployment under test: the Flask app (test client) and real worker processes."""

    env: dict[str, str]
    workdir: Path
    app: object = None
    client: object = None
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, name: str | None = None, beat: bool = False, queues: str | None = None,
                     **env) -> WorkerProcess:
        name = name or f"worker{len(self.workers) + 1}"
        options = {"queues": queues} if queues else {}
        worker = WorkerProcess({**self.env, **env}, name, self.workdir, beat=beat, **options)
        self.workers.append(worker)
        return worker.start()

    def start_beat(self) -> BeatProcess:
        beat = BeatProcess(self.env, "beat", self.workdir)
        self.workers.append(beat)
        return beat.start()

    def worker_logs(self) -> str:
        return "\n".join(worker.log() for worker in self.workers)

    def create_clip(self, **body):
        return self.client.post("/api/v1/clips", json=body)

    def clip(self, clip_id: str) -> dict:
        response = self.client.get(f"/api/v1/clips/{clip_id}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def job(self, clip_id: str) -> dict:
        return self.client.get(f"/api/v1/clips/{clip_id}/job").get_json()

    def wait_for_clip(self, clip_id: str, timeout: float = CLIP_TIMEOUT) -> dict:
        """Wait until the clip leaves ``processing``; return its record."""
        try:
            return wait_until(
                lambda: (c := self.clip(clip_id))["status"] != "processing" and c,
                timeout, interval=0.2, what=f"clip {clip_id} to finish",
            )
        except AssertionError:
            logs = "\n".join(w.log()[-6000:] for w in self.workers)
            raise AssertionError(f"clip {clip_id} still processing; worker logs:\n{logs}") from None

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def apply_migrations(env: dict[str, str]) -> None:
    """Run the Procfile's ``release`` command against this deployment's database."""
    result = subprocess.run(
        [sys.executable, "-m", "clipqueue", "db", "upgrade"],
        env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def service_factory(tmp_path: Path, redis_url: str, request):
    """Build a deployment: ``service_factory(db="sqlite"|"postgres", storage="local"|"s3", **env)``."""
    from clipqueue import create_app

    services: list[Service] = []
    databases = []

    def build(db: str = "sqlite", storage: str = "local", redis: str | None = None, **extra) -> Service:
        workdir = tmp_path / f"service{len(services)}"
        workdir.mkdir()
        if db == "postgres":
            database = postgres_database()
            databases.append(database)
            database_url = database.__enter__()
        else:
            database_url = f"sqlite:///{workdir / 'clipqueue.db'}"
        env = {
            **AWS_ENV,
            "REDIS_URL": redis or redis_url,
            "DATABASE_URL": database_url,
            "STORAGE_LOCAL_DIR": str(workdir / "media"),
            "PUBLIC_BASE_URL": "http://clips.test",
            "SCRATCH_DIR": str(workdir / "scratch"),
            "WORKER_HEARTBEAT_DIR": str(workdir / "heartbeats"),
            "ALLOW_PRIVATE_SOURCES": "true",
            "JOB_RETRY_BACKOFF_SECONDS": "1",
            "JOB_RETRY_BACKOFF_MAX_SECONDS": "2",
            "OUTBOX_SWEEP_SECONDS": "1",
            "OUTBOX_GRACE_SECONDS": "0",
            # Tests poll and create far faster than any viewer; the rate-limit tests turn them on.
            "RATE_LIMIT": "0",
            "RATE_LIMIT_READS": "0",
        }
        (workdir / "scratch").mkdir()
        if storage == "s3":
            s3_endpoint = request.getfixturevalue("s3_endpoint")
            bucket = f"clips-{len(services)}-{int(time.time() * 1000)}"
            boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
            env.update({"S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3_endpoint})
        env.update({key: str(value) for key, value in extra.items()})
        apply_migrations(env)
        app = create_app(env)
        service = Service(env=env, workdir=workdir, app=app, client=app.test_client())
        services.append(service)
        return service

    yield build
    from clipqueue.models import db as sqla

    for service in services:
        service.stop()
        with service.app.app_context():
            sqla.engine.dispose()
    for database in databases:
        database.__exit__(None, None, None)
