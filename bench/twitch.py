"""POST to ready for a clip from a Twitch link, against the same clip from the raw master playlist.

Run: ``python -m bench.twitch [--runs 7]``. A 2-minute 720p/480p VOD (made
once in ``$TMPDIR/clipqueue-bench-twitch-vod``) is served both as a plain HLS
master (the sample server) and behind a loopback fake of Twitch (GQL, usher,
CDN). The whole service runs for real (Redis, a Celery worker process,
SQLite, local storage). Rounds interleave the two sources on the same range;
the price of a Twitch link is the GQL and usher round trips before the
master playlist.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.service import clip_through_service, start_service
from samplevod.server import serve_directory
from samplevod.twitch import FakeTwitch, FakeVod
from samplevod.vod import DEMO_VARIANTS, generate_hls_vod

VIDEO_ID = "1234567890"


def ensure_vod(root: Path) -> Path:
    if not (root / "master.m3u8").exists():
        generate_hls_vod(root, duration=120, segment_seconds=10, variants=DEMO_VARIANTS)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.twitch", description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--start", type=float, default=42.4)
    parser.add_argument("--end", type=float, default=72.4)
    parser.add_argument("--quality", default="720p")
    parser.add_argument("--vod-dir", type=Path, default=Path(tempfile.gettempdir()) / "clipqueue-bench-twitch-vod")
    args = parser.parse_args(argv)
    root = ensure_vod(args.vod_dir)
    twitch = FakeTwitch()
    twitch.state.vods[VIDEO_ID] = FakeVod(root)
    plain = serve_directory(root)
    with tempfile.TemporaryDirectory(prefix="clipqueue-bench-twitch-") as tmp:
        client, processes = start_service(Path(tmp), **twitch.settings())
        try:
            sources = {"raw master playlist": f"{plain.url}/master.m3u8",
                       "Twitch link": f"https://www.twitch.tv/videos/{VIDEO_ID}"}
            times: dict[str, list[float]] = {name: [] for name in sources}
            for url in sources.values():  # warm-up
                clip_through_service(client, url, args.start, args.end, args.quality)
            for round_number in range(1, args.runs + 1):
                for name, url in sources.items():
                    times[name].append(clip_through_service(client, url, args.start, args.end, args.quality))
                print(f"  round {round_number}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
                      flush=True)
        finally:
            for process in processes:
                process.stop()
            plain.stop()
            twitch.stop()
    raw, link = (statistics.median(times[name]) for name in sources)
    print(f"\n{args.end - args.start:g} s accurate clip at {args.quality}, {args.runs} interleaved rounds, POST -> ready")
    print(f"  {'raw master playlist':<22} median {raw:6.2f} s")
    print(f"  {'Twitch link':<22} median {link:6.2f} s")
    print(f"  Twitch link / raw = {link / raw:.2f}")


if __name__ == "__main__":
    main()
