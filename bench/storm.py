"""A clip storm: N overlapping clips of one moment, the segment cache and identical-request reuse on and off.

Run: ``python -m bench.storm [--sizes 10,40,100] [--quality 480p]``. A
2-minute 720p/480p VOD (made once in ``$TMPDIR/clipqueue-bench-storm-vod``)
is served by the CDN-like loopback server in a process of its own
(``80ms/20Mbps`` by default), which counts the bytes it sends. The whole
service runs for real (Redis, one Celery worker of 2 processes, as on one
host, SQLite, local storage). For each size the same clips are posted at once
to a fresh deployment with ``SEGMENT_CACHE_BYTES=0`` and
``IDENTICAL_CLIP_WINDOW_SECONDS=0`` (off), then to one with the defaults (on).

The clips are what viewers of one moment ask for: starts spread over 10 s
(at 0.1 s steps), 15 to 25 s long, with a few identical requests among them
(a "clip the last 20 s" button pressed in the same second). Unique bytes are
the segments the union of the ranges overlaps. Time to ready is from the
POST to each clip's ``processed_at``. "one clip" is a single clip of the
moment, alone, with the cache off: N x that is the storm with no sharing and
perfect parallelism of one process.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench.extract import PROFILES, CdnProcess, overlapping_bytes
from bench.service import start_service
from samplevod.vod import DEMO_VARIANTS, generate_hls_vod

MOMENT = 40.0  # the moment everybody clips, seconds into the VOD
OFF = {"SEGMENT_CACHE_BYTES": "0", "IDENTICAL_CLIP_WINDOW_SECONDS": "0"}
POLL_SECONDS = 0.2


def ensure_vod(root: Path) -> Path:
    if not (root / "master.m3u8").exists():
        generate_hls_vod(root, duration=120, segment_seconds=10, variants=DEMO_VARIANTS)
    return root


def storm_ranges(count: int, seed: int = 12) -> list[tuple[float, float]]:
    """``count`` clips of one moment: mostly different, about one in eight the same as an earlier one."""
    rng = random.Random(seed)
    ranges: list[tuple[float, float]] = []
    for _ in range(count):
        if ranges and rng.random() < 0.125:
            ranges.append(rng.choice(ranges))
        else:
            start = MOMENT + round(rng.uniform(0, 10), 1)
            ranges.append((start, round(start + rng.uniform(15, 25), 1)))
    return ranges


def run_storm(client, master: str, ranges: list[tuple[float, float]],
              quality: str) -> tuple[list[float], float]:
    """Post every clip at once; return each one's seconds from its POST to ready, and from the first POST to
    the last ready."""
    posted = {}
    for start, end in ranges:
        began = time.time()
        response = client.post("/api/v1/clips", json={"vod_url": master, "start_time": start, "end_time": end,
                                                      "quality": quality})
        assert response.status_code == 201, response.get_json()
        posted[response.get_json()["clip_id"]] = began
    ready: dict[str, float] = {}
    last = 0.0
    deadline = time.time() + 60 + 30 * len(ranges)
    while len(ready) < len(posted) and time.time() < deadline:
        for clip_id in [c for c in posted if c not in ready]:
            clip = client.get(f"/api/v1/clips/{clip_id}").get_json()
            if clip["status"] != "processing":
                assert clip["status"] == "ready", clip
                done = datetime.fromisoformat(clip["processed_at"].replace("Z", "+00:00")).timestamp()
                ready[clip_id] = done - posted[clip_id]
                last = max(last, done)
        time.sleep(POLL_SECONDS)
    if len(ready) < len(posted):
        raise TimeoutError(f"{len(posted) - len(ready)} clips not ready in time")
    return list(ready.values()), last - min(posted.values())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    parser.add_argument("--sizes", default="10,40", help="comma-separated storm sizes (e.g. 10,40,100)")
    parser.add_argument("--quality", default="480p")
    parser.add_argument("--rounds", type=int, default=1, help="storms of each size and setting; medians reported")
    parser.add_argument("--profile", choices=list(PROFILES), default="80ms/20Mbps")
    parser.add_argument("--vod-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "clipqueue-bench-storm-vod")
    args = parser.parse_args(argv)
    root = ensure_vod(args.vod_dir)
    sizes = [int(size) for size in args.sizes.split(",")]

    measured: dict[tuple[int, str], list[tuple[float, ...]]] = {}
    with CdnProcess(root, **PROFILES[args.profile]) as cdn:
        master = f"{cdn.url}/master.m3u8"
        with tempfile.TemporaryDirectory(prefix="clipqueue-bench-storm-") as tmp:
            client, processes = start_service(Path(tmp) / "single", concurrency=2, **OFF)
            try:
                single = run_storm(client, master, [(MOMENT, MOMENT + 20)], args.quality)[1]
            finally:
                for process in processes:
                    process.stop()
            for size, round_ in ((size, round_) for round_ in range(args.rounds) for size in sizes):
                ranges = storm_ranges(size)
                union = min(start for start, _ in ranges), max(end for _, end in ranges)
                unique = overlapping_bytes(root, args.quality, *union)
                cold = {"SEGMENT_CACHE_DIR": str(Path(tmp) / f"cache-{size}-{round_}")}  # each storm's own
                settings = [("off", OFF), ("on", cold)]
                for label, env in settings if round_ % 2 == 0 else settings[::-1]:  # alternated against drift
                    folder = Path(tmp) / f"{size}-{label}-{round_}"
                    client, processes = start_service(folder, concurrency=2, **env)
                    try:
                        cdn.bytes_sent(reset=True)
                        began = time.time()
                        times, all_ready = run_storm(client, master, ranges, args.quality)
                        sent = cdn.bytes_sent()
                    finally:
                        for process in processes:
                            process.stop()
                    measured.setdefault((size, label), []).append(
                        (sent / unique, all_ready, statistics.median(times), percentile(times, 0.95)))
                    print(f"  round {round_ + 1}, {size} clips, cache {label}: done in {time.time() - began:.1f} s, "
                          f"CDN bytes / unique {sent / unique:.2f}", flush=True)
    rows = [(size, label, len(set(storm_ranges(size))),
             *(statistics.median(column) for column in zip(*measured[(size, label)])), size * single)
            for size in sizes for label in ("off", "on")]

    print(f"\nclip storm: {args.quality}, CDN {args.profile}, one worker of 2 processes, medians of "
          f"{args.rounds} round(s); one clip alone: {single:.2f} s\n")
    print("| clips | distinct | cache | CDN bytes / unique | all ready s | p50 s | p95 s | N x one clip s "
          "| all ready / (N x one) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for size, label, distinct, ratio, all_ready, p50, p95, serial in rows:
        print(f"| {size} | {distinct} | {label} | {ratio:.2f} | {all_ready:.1f} | {p50:.1f} | {p95:.1f} "
              f"| {serial:.1f} | {all_ready / serial:.2f} |")
    print("\n| clips | CDN bytes on / off | all ready on / off | p50 on / off | p95 on / off |")
    print("|---:|---:|---:|---:|---:|")
    by = {(row[0], row[1]): row for row in rows}
    for size in sizes:
        on, off = by[(size, "on")], by[(size, "off")]
        ratios = " | ".join(f"{on[column] / off[column]:.2f}" for column in (3, 4, 5, 6))
        print(f"| {size} | {ratios} |")


if __name__ == "__main__":
    main()
