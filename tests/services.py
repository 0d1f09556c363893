"""Real services for the tests: private Redis servers, PostgreSQL databases, an S3 API, worker processes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import redis

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A private redis-server the tests may stop and start."""

    def __init__(self, workdir: Path, appendonly: bool = False):
        self.port = free_port()
        self.workdir = workdir
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), 10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@contextmanager
def postgres_database():
    """A fresh PostgreSQL database, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"clipqueue_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


class WorkerProcess:
    """A real ``celery worker`` in its own process group, configured by environment alone."""

    ready_marker = b"ready."

    def __init__(self, env: dict[str, str], name: str, logdir: Path, beat: bool = False,
                 concurrency: int = 1, queues: str = "clip_extraction_jobs,clipqueue_control"):
        self.env = env
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.beat = beat
        self.concurrency = concurrency
        self.queues = queues
        self.process: subprocess.Popen | None = None
        self.logdir = logdir

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "celery", "-A", "clipqueue.make_celery", "worker",
            "--queues", self.queues,
            "--concurrency", str(self.concurrency), "--pool", "prefork",
            "--hostname", f"{self.name}@%h", "--loglevel", "INFO", "--without-mingle",
            "--without-gossip",
        ]
        if self.beat:
            command += ["--beat", "--schedule", str(self.logdir / f"{self.name}-beat-schedule")]
        return command

    def start(self) -> WorkerProcess:
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(), env={**os.environ, **self.env}, cwd=REPO,
            stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(lambda: self.ready_marker in self.log_path.read_bytes() or self._died(), 60,
                   what=f"worker {self.name} to start")
        if self._died():
            raise AssertionError(f"worker {self.name} exited:\n{self.log()}")
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, sig: int) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 20) -> None:
        if self.process is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(10)
        self.log_file.close()
        self.process = None


class BeatProcess(WorkerProcess):
    """A real ``celery beat``: the Procfile's periodic work (outbox sweep, janitor)."""

    ready_marker = b"beat: Starting"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "clipqueue.make_celery", "beat",
            "--schedule", str(self.logdir / f"{self.name}-schedule"), "--loglevel", "INFO",
        ]


class GeneratedMedia:
    """samplevod's generators, each distinct call encoded once per test run and copied where a test wants it.

    ``root`` is shared by every xdist worker of the run: a file lock per call lets one worker encode while the
    others wait for its result instead of running the same ffmpeg encode again. Each caller gets its own copy,
    so a test may change the files it was given.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def hls_vod(self, out_dir: Path, **options) -> Path:
        """``generate_hls_vod(out_dir, **options)``; returns the master playlist's path."""
        from samplevod.vod import generate_hls_vod

        made = self._made("hls_vod", options, lambda folder: generate_hls_vod(folder, **options))
        shutil.copytree(made, out_dir, dirs_exist_ok=True)
        return Path(out_dir) / "master.m3u8"

    def progressive_mp4(self, path: Path, **options) -> Path:
        """``generate_progressive_mp4(path, **options)``; returns ``path``."""
        from samplevod.vod import generate_progressive_mp4

        made = self._made("progressive_mp4", options,
                          lambda folder: generate_progressive_mp4(folder / "source.mp4", **options))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made / "source.mp4", path)
        return Path(path)

    def _made(self, kind: str, options: dict, make) -> Path:
        key = hashlib.sha256(repr((kind, sorted(options.items()))).encode()).hexdigest()[:16]
        done = self.root / key
        with open(self.root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or if this worker dies
            if not done.exists():
                partial = self.root / f"{key}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                make(partial)
                partial.rename(done)
        return done
