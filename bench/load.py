"""Load: the API's create throughput and latency, jobs per second end to end, and the queue's own overhead.

Run: ``python -m bench.load`` (see bench/README.md). One private deployment
runs as the Procfile runs it: a private redis-server, PostgreSQL (or SQLite
with ``--db sqlite``), ``web`` under gunicorn's gevent worker (2 processes),
and ``clipqueue worker`` (a prefork job worker of ``--concurrency`` processes
beside its control worker). Three parts, each against a baseline measured in
the same run:

1. **Create**: ``--requests`` POSTs from 1, 8 and 32 concurrent clients (one
   keep-alive connection each), with no worker running. Baseline: ``GET
   /healthz`` (a request that touches neither Redis nor the database) from the
   same clients. Also ``POST /clips/batch`` of 100, in clips per second.
2. **Queue overhead**: ``--jobs`` jobs are queued while no worker runs, then
   the worker starts. Throughput is counted from the first job's start to the
   last one's end, so neither the worker's start nor the sending is in it.
   Baseline: as many bare Celery tasks that do nothing but note their times in
   Redis, on the same Redis server (another database), a prefork worker of the
   same concurrency, late acks and prefetch 1 as clipqueue's. Against it:
   clipqueue jobs whose source answers 404 at once (every step of a job but
   the media: lease, metadata, events, metrics, database, failure) and cheap
   real clips (``copy`` mode, 2 s, from a loopback HLS VOD).
3. Each table prints medians and ratios; the machine's load is printed too.

The client runs on the same cores as the server: on 2 shared cores the
figures are what this machine gives, not a server's ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis
import requests
from celery import Celery

from tests.services import REPO, RedisServer, free_port, postgres_database, wait_until

NOOP_QUEUE = "bench_noop"
NOOP_KEY = "bench:noop:times"
CLIP = {"start_time": 10.0, "end_time": 12.0, "mode": "copy", "quality": "360p"}

# The baseline's Celery app: ``celery -A bench.load:noop_app worker``, its broker from the environment.
# No default broker: the bench sets it to its private Redis before sending anything.
noop_app = Celery("bench_noop", broker=os.environ.get("BENCH_NOOP_BROKER", "redis://127.0.0.1:1/0"))
noop_app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                     task_default_queue=NOOP_QUEUE, broker_connection_retry_on_startup=True)


@noop_app.task(name="bench.noop")
def noop() -> None:
    """Nothing but noting when it ran (the one Redis call a finished task needs to be counted)."""
    started = time.time()
    client = redis.Redis.from_url(noop_app.conf.broker_url)
    client.rpush(NOOP_KEY, json.dumps([started, time.time()]))


class Process:
    """A Procfile-like process with its log in a file, stopped by SIGTERM to its group."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, ready: bytes, count: int = 1):
        self.log = log
        self.file = open(log, "ab")
        self.popen = subprocess.Popen(command, env={**os.environ, **env}, cwd=REPO, stdout=self.file,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: log.read_bytes().count(ready) >= count or self.popen.poll() is not None, 90,
                   what=f"{command[2:5]} to start")
        if self.popen.poll() is not None:
            raise RuntimeError(f"{command} exited:\n{log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self.file.close()


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args):
        pass


def _serve(handler_or_dir, stack: ExitStack) -> str:
    if isinstance(handler_or_dir, Path):
        from samplevod.server import serve_directory

        server = serve_directory(handler_or_dir)
        stack.callback(server.stop)
        return server.url
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_or_dir)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack.callback(server.shutdown)
    return f"http://127.0.0.1:{server.server_address[1]}"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).ok
    except requests.RequestException:
        return False


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def hammer(url: str, clients: int, total: int, body: dict | None = None) -> tuple[float, list[float]]:
    """``total`` requests from ``clients`` threads (a keep-alive session each): requests/s and latencies (s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    share = [total // clients + (i < total % clients) for i in range(clients)]

    def client(count: int) -> None:
        with requests.Session() as session:
            for _ in range(count):
                began = time.perf_counter()
                response = session.post(url, json=body, timeout=60) if body else session.get(url, timeout=60)
                took = time.perf_counter() - began
                with lock:
                    latencies.append(took)
                    if response.status_code >= 300:
                        errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(count,)) for count in share]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return total / wall, latencies


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _drain(items: list[tuple[float, float]]) -> tuple[float, float]:
    """Jobs per second from the first start to the last end, and the median time a job ran."""
    first = min(start for start, _ in items)
    last = max(end for _, end in items)
    return (len(items) - 1) / (last - first), statistics.median(end - start for start, end in items)


def create_part(base: str, clips: list[int], total: int, vod_url: str) -> None:
    print(f"\n## 1. Create: {total} requests per row, no worker running\n")
    print("| clients | GET /healthz req/s | POST /clips req/s | create / healthz | create p50 ms | create p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    body = {**CLIP, "vod_url": vod_url}
    single = {}
    for count in clips:
        hammer(f"{base}/healthz", count, min(total, 50))  # warm the connections and the workers
        health, _ = hammer(f"{base}/healthz", count, total)
        rate, latencies = hammer(f"{base}/api/v1/clips", count, total, body)
        single[count] = rate
        print(f"| {count} | {health:.0f} | {rate:.1f} | {rate / health:.2f} | "
              f"{statistics.median(latencies) * 1000:.0f} | {_percentile(latencies, 0.99) * 1000:.0f} |",
              flush=True)
    print("\n| batch of 100, clients | batches | clips/s | batch p50 ms | vs single POSTs (same clients) |")
    print("|---:|---:|---:|---:|---:|")
    for count in (1, min(8, max(clips))):
        batches = max(count, total // 100)
        rate, latencies = hammer(f"{base}/api/v1/clips/batch", count, batches, {"clips": [body] * 100})
        near = single.get(count) or single[min(single, key=lambda c: abs(c - count))]
        print(f"| {count} | {batches} | {rate * 100:.1f} | {statistics.median(latencies) * 1000:.0f} | "
              f"{rate * 100 / near:.2f} |", flush=True)


def queue_part(base: str, env: dict[str, str], workdir: Path, jobs: int, concurrency: int,
               missing_url: str, vod_url: str, noop_broker: str) -> None:
    print(f"\n## 2. Jobs per second: {jobs} jobs queued, then one worker of concurrency {concurrency}\n")
    rows = []

    # Baseline: bare Celery tasks that do nothing, on the same Redis server.
    noop_app.conf.broker_url = noop_broker
    noop_redis = redis.Redis.from_url(noop_broker)
    noop_redis.flushdb()
    for _ in range(jobs):
        noop.apply_async()
    worker = Process([sys.executable, "-m", "celery", "-A", "bench.load:noop_app", "worker", "--queues",
                      NOOP_QUEUE, "--concurrency", str(concurrency), "--pool", "prefork", "--loglevel",
                      "WARNING", "--without-mingle", "--without-gossip"],
                     {"BENCH_NOOP_BROKER": noop_broker}, workdir / "noop-worker.log", b"", 0)
    wait_until(lambda: noop_redis.llen(NOOP_KEY) >= jobs, 300, interval=0.2, what="the no-op tasks")
    worker.stop()
    rows.append(("bare Celery task doing nothing", _drain([tuple(json.loads(x))
                                                           for x in noop_redis.lrange(NOOP_KEY, 0, -1)])))

    for label, url in (("clipqueue job, source 404 (all but the media)", missing_url),
                       ("clipqueue copy clip, 2 s at 360p", vod_url)):
        ids = []
        for start in range(0, jobs, 100):
            count = min(100, jobs - start)
            response = requests.post(f"{base}/api/v1/clips/batch", timeout=120,
                                     json={"clips": [{**CLIP, "vod_url": url, "start_time": 10.0 + i % 40,
                                                      "end_time": 12.0 + i % 40}
                                                     for i in range(start, start + count)]})
            assert response.status_code == 201, response.text[:500]
            ids += [clip["clip_id"] for clip in response.json()["clips"]]
        worker = Process([sys.executable, "-m", "clipqueue", "worker", "--concurrency", str(concurrency),
                          "--loglevel", "WARNING"], env, workdir / "worker.log", b"ready.", 0)
        client = redis.Redis.from_url(env["REDIS_URL"])

        def finished():
            pipe = client.pipeline(transaction=False)
            for clip_id in ids:
                pipe.hmget(f"clip_extraction_job:{clip_id}", "status", "started_at", "completed_at")
            answers = pipe.execute()
            done = [a for a in answers if a[0] in (b"completed", b"failed") and a[2]]
            return len(done) == len(ids) and done

        done = wait_until(finished, 900, interval=0.5, what=label)
        worker.stop()
        statuses = {status.decode() for status, _, _ in done}
        rows.append((f"{label} ({'/'.join(sorted(statuses))})",
                     _drain([(_stamp(s.decode()), _stamp(e.decode())) for _, s, e in done])))

    base_rate, base_time = rows[0][1]
    print("| job | jobs/s | median s started → ended | jobs/s vs bare Celery | slot s per job beyond bare |")
    print("|---|---:|---:|---:|---:|")
    for label, (rate, median) in rows:
        own = concurrency / rate - concurrency / base_rate
        print(f"| {label} | {rate:.1f} | {median:.3f} | {rate / base_rate:.2f} | "
              f"{own:+.3f} |", flush=True)
    print("\nslot s per job beyond bare: a worker slot's time per job (concurrency / jobs/s) beyond the bare "
          "task's;\nfor the 404 job that is clipqueue's own cost per job (everything but the media).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per row of the create table")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per row of the jobs table")
    parser.add_argument("--concurrency", type=int, default=2, help="the job worker's processes")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--vod-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "clipqueue-bench-load-vod")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    if not (args.vod_dir / "master.m3u8").exists():
        from samplevod.vod import generate_hls_vod

        print(f"generating the VOD once in {args.vod_dir} ...", flush=True)
        generate_hls_vod(args.vod_dir, duration=60, segment_seconds=10)

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="clipqueue-bench-load-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir / "redis")
        redis_server.start()
        stack.callback(redis_server.stop)
        if args.db == "postgres":
            database_url = stack.enter_context(postgres_database())
        else:
            database_url = f"sqlite:///{workdir / 'clipqueue.db'}"
        port = free_port()
        env = {
            "REDIS_URL": redis_server.url(0), "DATABASE_URL": database_url,
            "STORAGE_LOCAL_DIR": str(workdir / "media"), "SCRATCH_DIR": str(workdir),
            "WORKER_HEARTBEAT_DIR": str(workdir / "heartbeats"), "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "ALLOW_PRIVATE_SOURCES": "true", "RATE_LIMIT": "0", "RATE_LIMIT_READS": "0",
            "WEB_ADDRESS": "127.0.0.1", "PORT": str(port),
        }
        subprocess.run([sys.executable, "-m", "clipqueue", "db", "upgrade"], env={**os.environ, **env},
                       cwd=REPO, check=True, capture_output=True, timeout=300)
        web_line = next(line for line in (REPO / "Procfile").read_text().splitlines() if line.startswith("web:"))
        web = Process(["sh", "-c", "exec " + web_line.split(":", 1)[1].strip()], env, workdir / "web.log",
                      b"Booting worker", 2)
        stack.callback(web.stop)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{base}/readyz"), 60, what="web to be ready")
        missing_url = _serve(_NotFound, stack) + "/vod.m3u8"
        vod_url = _serve(args.vod_dir, stack) + "/master.m3u8"

        print(f"# bench.load: {args.db}, web = Procfile's gunicorn (gevent, 2 processes), "
              f"load average before {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        create_part(base, clients, args.requests, missing_url)
        redis.Redis.from_url(env["REDIS_URL"]).flushdb()
        queue_part(base, env, workdir, args.jobs, args.concurrency, missing_url, vod_url, redis_server.url(1))
        print(f"\nload average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
