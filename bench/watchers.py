"""Many live watchers on one web host: do they all see the end, and does creating clips stay fast?

Run: ``python -m bench.watchers`` (``--levels 100,300,1000``, ``--clips``, ``--creates``).
For each level N, on a deployment of its own kind (a private redis-server,
SQLite, local storage, a small sample VOD on a loopback server):

1. ``--clips`` clips are created; no worker runs yet, so they wait, queued.
2. N watchers connect, spread over those clips, alternating SSE
   (``/api/v1/clips/{id}/events``) and WebSocket (``/api/v1/clips/{id}/ws``),
   all to the Procfile's ``web`` line (gunicorn, gevent worker,
   ``WEB_CONCURRENCY`` processes), and each gets the job as it is.
3. A real ``celery worker`` starts and cuts the clips; meanwhile
   ``--creates`` more clips are POSTed, one every 0.2 s, each timed.
4. Each watcher waits for its clip's final state (bounded by
   ``--deadline``); the share that saw ``completed`` is reported.

The web processes' memory is the peak sum of their RSS (gunicorn's master and
workers, read from /proc) while the watchers are connected; their Redis
connections are counted (``INFO clients``) once all watchers are connected. Rate limits are
off: every watcher comes from one address. The watchers are asyncio clients
in this process, one socket each; the open-file limit is raised to fit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

from tests.services import REPO, RedisServer, WorkerProcess, free_port, wait_until

FINAL = ("completed", "failed", "canceled")


def _procfile_web() -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit("no web line in the Procfile")


def _rss_bytes(root_pid: int) -> int:
    """RSS of ``root_pid`` and its children (gunicorn's master and workers)."""
    pids = [root_pid]
    total = 0
    for _ in range(100):
        if not pids:
            break
        pid = pids.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
        pids += [int(child) for child in children]
    return total


async def _sse_watch(host: str, port: int, clip_id: str, connected: asyncio.Event | None,
                     deadline: float) -> str | None:
    """Watch one clip over SSE; return the final status seen, or None."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET /api/v1/clips/{clip_id}/events HTTP/1.1\r\nHost: {host}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        status = None
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - time.monotonic()))
            if not line:
                return status
            if line.startswith(b"retry:") and connected is not None:
                connected.set()
            if line.startswith(b"data: "):
                status = json.loads(line[6:])["status"]
                if status in FINAL:
                    return status
        return None
    finally:
        writer.close()


async def _ws_watch(host: str, port: int, clip_id: str, connected: asyncio.Event | None,
                    deadline: float) -> str | None:
    """Watch one clip over a WebSocket (a minimal RFC 6455 client: text frames and pings from the server)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /api/v1/clips/{clip_id}/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     .encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(0.1, deadline - time.monotonic()))
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            return None
        if connected is not None:
            connected.set()
        status = None
        while time.monotonic() < deadline:
            header = await asyncio.wait_for(reader.readexactly(2), max(0.1, deadline - time.monotonic()))
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(length)
            if opcode == 0x8:
                return status
            if opcode == 0x9:
                # Answer pings as every client library does: the server closes sockets that do not.
                mask = os.urandom(4)
                writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask
                             + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                await writer.drain()
            if opcode == 0x1:
                status = json.loads(payload)["data"]["status"]
                if status in FINAL:
                    return status
        return None
    finally:
        writer.close()


async def _watchers(host: str, port: int, clip_ids: list[str], count: int, all_connected: threading.Event,
                    deadline: float) -> list[str | None]:
    events = [asyncio.Event() for _ in range(count)]

    async def one(index: int) -> str | None:
        watch = _sse_watch if index % 2 == 0 else _ws_watch
        try:
            return await watch(host, port, clip_ids[index % len(clip_ids)], events[index], deadline)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            stage = "after connecting" if events[index].is_set() else "connecting"
            return f"error {watch.__name__} {stage}: {type(exc).__name__}: {exc}"[:100]
        finally:
            events[index].set()

    tasks = []
    for index in range(count):
        tasks.append(asyncio.create_task(one(index)))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # a crowd arriving, not one burst of SYNs
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), max(1, deadline - time.monotonic()))
    all_connected.set()
    return await asyncio.gather(*tasks)


def _create(base: str, master: str, start: float) -> tuple[str, float]:
    began = time.perf_counter()
    response = requests.post(f"{base}/api/v1/clips", json={
        "vod_url": master, "start_time": start, "end_time": start + 4, "quality": "160p", "mode": "copy"},
        timeout=30)
    elapsed = time.perf_counter() - began
    response.raise_for_status()
    return response.json()["clip_id"], elapsed


def run_level(count: int, args, master: str, workdir: Path) -> dict:
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    env = {
        "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
        "REDIS_URL": redis_server.url(0), "DATABASE_URL": f"sqlite:///{workdir / 'clipqueue.db'}",
        "STORAGE_LOCAL_DIR": str(workdir / "media"), "SCRATCH_DIR": str(workdir),
        "ALLOW_PRIVATE_SOURCES": "true", "RATE_LIMIT": "0", "RATE_LIMIT_READS": "0",
        "WEB_ADDRESS": "127.0.0.1", "PORT": str(free_port()), "WEB_CONCURRENCY": str(args.web_concurrency),
    }
    subprocess.run([sys.executable, "-m", "clipqueue", "db", "upgrade"], env=env, cwd=REPO, check=True,
                   capture_output=True, timeout=120)
    log = open(workdir / "web.log", "wb")
    web = subprocess.Popen(["sh", "-c", f"exec {_procfile_web()}"], env=env, cwd=REPO, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    base = f"http://127.0.0.1:{env['PORT']}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), 60, what="web to answer")
        watched = [_create(base, master, 2.0 + i % 40)[0] for i in range(args.clips)]
        deadline = time.monotonic() + args.deadline
        connected = threading.Event()
        results: list = []
        client = threading.Thread(target=lambda: results.extend(asyncio.run(
            _watchers("127.0.0.1", int(env["PORT"]), watched, count, connected, deadline))))
        client.start()
        connected.wait(args.deadline)
        peak_rss = _rss_bytes(web.pid)
        # Every client of this private Redis now is the web processes' (no worker runs yet).
        redis_clients = redis.Redis.from_url(env["REDIS_URL"]).info("clients")["connected_clients"] - 1
        worker = WorkerProcess(env, f"bench{count}", workdir, concurrency=2).start()
        latencies = []
        for i in range(args.creates):
            latencies.append(_create(base, master, 2.0 + i % 40)[1])
            peak_rss = max(peak_rss, _rss_bytes(web.pid))
            time.sleep(0.2)
        client.join(max(1, deadline - time.monotonic()) + 5)
        peak_rss = max(peak_rss, _rss_bytes(web.pid))
        latencies.sort()
        outcomes = collections.Counter(str(status) for status in results)
        if outcomes.get("completed", 0) < count:
            print(f"{count} watchers, outcomes other than completed: "
                  f"{ {k: v for k, v in outcomes.items() if k != 'completed'} }", file=sys.stderr)
        return {
            "watchers": count,
            "saw_end": sum(1 for status in results if status == "completed") / count,
            "create_p50": statistics.median(latencies),
            "create_p95": latencies[max(0, int(len(latencies) * 0.95) - 1)],
            "web_rss_mb": peak_rss / 2**20,
            "redis_clients": redis_clients,
        }
    finally:
        if worker is not None:
            worker.stop()
        os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
        log.close()
        redis_server.stop()
        problems = [line for line in (workdir / "web.log").read_text(errors="replace").splitlines()
                    if "Error" in line or "WARNING" in line or "CRITICAL" in line]
        for line in problems[:20]:
            print(f"web: {line}", file=sys.stderr)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.watchers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="100,300,1000", help="watcher counts, comma-separated")
    parser.add_argument("--clips", type=int, default=10, help="clips the watchers share")
    parser.add_argument("--creates", type=int, default=40, help="clips created (and timed) under load")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds a level may take at most")
    parser.add_argument("--web-concurrency", type=int, default=2, help="gunicorn worker processes")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * max(levels) + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    from samplevod.server import serve_directory
    from samplevod.vod import generate_hls_vod

    with tempfile.TemporaryDirectory(prefix="clipqueue-watchers-") as tmp:
        root = Path(tmp)
        generate_hls_vod(root / "vod" / "hls", duration=60, segment_seconds=10,
                         variants=(("160p", 284, 160, 250_000),))
        server = serve_directory(root / "vod")
        master = f"{server.url}/hls/master.m3u8"
        rows = []
        try:
            for count in levels:
                workdir = root / f"level-{count}"
                workdir.mkdir()
                row = run_level(count, args, master, workdir)
                rows.append(row)
                print(f"{count} watchers: {row}", file=sys.stderr, flush=True)
        finally:
            server.stop()
    print(f"| watchers | saw the end | create p50 | create p95 | web RSS (gunicorn, "
          f"{args.web_concurrency} workers) | web's Redis connections |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['watchers']} | {row['saw_end']:.1%} | {row['create_p50'] * 1000:.0f} ms | "
              f"{row['create_p95'] * 1000:.0f} ms | {row['web_rss_mb']:.0f} MB | {row['redis_clients']} |")


if __name__ == "__main__":
    main()
