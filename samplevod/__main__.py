"""Command line: ``python -m samplevod generate DIR`` and ``python -m samplevod serve DIR``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from samplevod.server import serve_directory
from samplevod.vod import DEMO_VARIANTS, generate_hls_vod, generate_progressive_mp4


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m samplevod", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write a sample HLS VOD (master.m3u8: 720p and 480p) and source.mp4")
    generate.add_argument("dir", type=Path)
    generate.add_argument("--duration", type=float, default=60)
    generate.add_argument("--segment-seconds", type=float, default=10)
    generate.add_argument("--fmp4", action="store_true", help="fMP4 segments with #EXT-X-MAP, like current Twitch VODs")
    generate.add_argument("--codec", choices=("h264", "hevc", "av1"), default="h264",
                          help="hevc: x265, av1: SVT-AV1 (as Enhanced Broadcasting's renditions); use --fmp4")
    generate.add_argument("--muted", type=_int_list, default=[], help="segment numbers to name -muted, e.g. 2,3")

    serve = commands.add_parser("serve", help="serve a folder over HTTP with Range support")
    serve.add_argument("dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8089)
    serve.add_argument("--latency", type=float, default=0.0, help="seconds added to each response")
    serve.add_argument("--connection-mbps", type=float, default=None, help="bandwidth cap per connection")
    serve.add_argument("--total-mbps", type=float, default=None, help="bandwidth cap over all connections")

    args = parser.parse_args(argv)
    if args.command == "generate":
        master = generate_hls_vod(args.dir, duration=args.duration, segment_seconds=args.segment_seconds,
                                  fmp4=args.fmp4, muted_segments=args.muted, codec=args.codec,
                                  variants=DEMO_VARIANTS,
                                  preset="superfast")  # 720p at veryfast takes minutes on a small machine
        mp4 = generate_progressive_mp4(args.dir / "source.mp4", duration=args.duration)
        print(f"wrote {master} and {mp4}")
        return

    def bytes_per_second(mbps: float | None) -> float | None:
        return mbps * 1e6 / 8 if mbps else None

    with serve_directory(args.dir, host=args.host, port=args.port, latency=args.latency,
                         connection_bandwidth=bytes_per_second(args.connection_mbps),
                         total_bandwidth=bytes_per_second(args.total_mbps)) as server:
        print(f"serving {args.dir} at {server.url}/ (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
