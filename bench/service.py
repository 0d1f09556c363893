"""End to end: POST to ready for an accurate 30 s clip, against the seed's bare command.

Run: ``python -m bench.service`` (see bench/README.md). The whole service runs
for real: a private redis-server, a ``celery worker`` process, SQLite, local
storage and the Flask app; the VOD is the extraction benchmark's, behind the
same CDN-like loopback server, run in a process of its own as a CDN is on a
machine of its own. Each round times the seed's ``ffmpeg -ss -to -i URL -c
copy`` and then one clip through the service (POST, queue, fetch, smart cut,
thumbnail, upload, finalize), interleaved, and prints medians and their ratio.

A clip is ready when its record says so: the time is taken from the POST to
the record's ``processed_at``, written when the worker marks it ``ready``.
GET polls every 0.1 s, as a client would, only to learn that it happened:
polling as fast as the clock allows would take the CPU the worker needs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.extract import PROFILES, CdnProcess, add_clip_arguments, ensure_vod, tools
from tests.services import RedisServer, WorkerProcess

POLL_SECONDS = 0.1


def start_service(workdir: Path, concurrency: int = 1, **extra_env: str) -> tuple[object, list]:
    """A private deployment: Redis, migrations, one worker (of ``concurrency`` processes), and the app's test client."""
    from flask_migrate import upgrade

    from clipqueue import MIGRATIONS_DIR, create_app

    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    env = {
        "REDIS_URL": redis_server.url(0),
        "DATABASE_URL": f"sqlite:///{workdir / 'clipqueue.db'}",
        "STORAGE_LOCAL_DIR": str(workdir / "media"),
        "SCRATCH_DIR": str(workdir),
        "ALLOW_PRIVATE_SOURCES": "true",
        "RATE_LIMIT": "0",
        "RATE_LIMIT_READS": "0",
        **extra_env,
    }
    app = create_app(env)
    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
    worker = WorkerProcess(env, "bench", workdir, concurrency=concurrency).start()
    return app.test_client(), [worker, redis_server]


def clip_through_service(client, master: str, start: float, end: float, quality: str) -> float:
    """Seconds from POST to the clip being ``ready`` (its ``processed_at``)."""
    began = time.time()
    response = client.post("/api/v1/clips", json={"vod_url": master, "start_time": start, "end_time": end,
                                                  "quality": quality, "mode": "accurate"})
    assert response.status_code == 201, response.get_json()
    clip_id = response.get_json()["clip_id"]
    deadline = began + 300
    while time.time() < deadline:
        clip = client.get(f"/api/v1/clips/{clip_id}").get_json()
        if clip["status"] != "processing":
            assert clip["status"] == "ready", clip
            return datetime.fromisoformat(clip["processed_at"].replace("Z", "+00:00")).timestamp() - began
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"clip {clip_id} not ready after 300 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__)
    add_clip_arguments(parser)
    args = parser.parse_args(argv)
    ensure_vod(args.vod_dir, args.duration, args.start, args.end)

    with tempfile.TemporaryDirectory(prefix="clipqueue-bench-service-") as tmp:
        client, processes = start_service(Path(tmp))
        try:
            for name in args.profile or list(PROFILES):
                server = CdnProcess(args.vod_dir, **PROFILES[name])
                master = f"{server.url}/master.m3u8"
                media = f"{server.url}/{args.quality}/index.m3u8"
                seed = tools(master, media, args.start, args.end, args.quality)["seed ffmpeg -c copy"]
                clip_through_service(client, master, args.start, args.end, args.quality)  # warm-up
                seed_times, service_times = [], []
                for _ in range(args.runs):
                    with tempfile.TemporaryDirectory() as out:
                        began = time.perf_counter()
                        seed(Path(out))
                        seed_times.append(time.perf_counter() - began)
                    service_times.append(clip_through_service(client, master, args.start, args.end, args.quality))
                    print(f"  round {len(service_times)}: seed {seed_times[-1]:.2f} s, service {service_times[-1]:.2f} s",
                          flush=True)
                server.stop()
                seed_median = statistics.median(seed_times)
                service_median = statistics.median(service_times)
                print(f"\n{name}: {args.end - args.start:g} s accurate clip at {args.quality}, {args.runs} rounds")
                print(f"  {'seed ffmpeg -c copy (bare command)':<44} median {seed_median:6.2f} s")
                print(f"  {'clipqueue POST -> ready (thumbnail, upload)':<44} median {service_median:6.2f} s")
                verdict = "met" if service_median <= seed_median else "NOT met"
                print(f"  service / seed = {service_median / seed_median:.2f}  (target <= 1.00: {verdict})")
        finally:
            for process in processes:
                process.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
