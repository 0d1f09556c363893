"""Benchmark clip extraction against the seed's command, yt-dlp and streamlink on a CDN-like loopback server.

Run: ``python -m bench.extract`` (see bench/README.md). Prints one table per
network profile: median wall time, bytes fetched, where each clip really
starts and ends (read from decoded frames), frames stored versus shown, and
the target ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from clipqueue.media.playlist import parse_media, select_segments
from samplevod.frames import read_frame_ids
from samplevod.server import STATS_PATH
from samplevod.vod import generate_long_hls_vod
from clipqueue.urlpolicy import SourcePolicy

FPS = 30
MBIT = 1_000_000 / 8
PROFILES = {
    "20ms/100Mbps/1Gbps": dict(latency=0.020, connection_bandwidth=100 * MBIT, total_bandwidth=1000 * MBIT),
    "80ms/20Mbps": dict(latency=0.080, connection_bandwidth=20 * MBIT),
}


class CdnProcess:
    """The CDN-like loopback server (``python -m samplevod serve``) in a process of its own.

    A CDN runs on a machine of its own: in the benchmark's process its
    threads would share the interpreter with the tools measured.
    """

    def __init__(self, root: Path, latency: float, connection_bandwidth: float | None = None,
                 total_bandwidth: float | None = None):
        args = [sys.executable, "-m", "samplevod", "serve", "--port", "0", "--latency", str(latency)]
        if connection_bandwidth:
            args += ["--connection-mbps", str(connection_bandwidth / MBIT)]
        if total_bandwidth:
            args += ["--total-mbps", str(total_bandwidth / MBIT)]
        self.process = subprocess.Popen([*args, str(root)], stdout=subprocess.PIPE, text=True)
        banner = self.process.stdout.readline()  # "serving <dir> at http://127.0.0.1:<port>/ (...)"
        if " at " not in banner:
            self.stop()
            raise RuntimeError(f"the CDN server did not start: {banner!r}")
        self.url = banner.split(" at ", 1)[1].split("/ ", 1)[0]

    def bytes_sent(self, reset: bool = False) -> int:
        """Bytes served since the last reset (``reset`` starts counting again)."""
        with urllib.request.urlopen(f"{self.url}{STATS_PATH}{'?reset' if reset else ''}", timeout=10) as answer:
            return json.load(answer)["bytes_sent"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def __enter__(self) -> CdnProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Outcome:
    times: list[float] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    stored: int | None = None
    shown: int | None = None
    error: str | None = None


def _run(args: list[str], timeout: float = 600) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)


def tools(master: str, media: str, start: float, end: float, quality: str) -> dict[str, Callable[[Path], Path]]:
    """Each competitor as a function writing a clip under a folder and returning its path."""
    options = ExtractOptions(policy=SourcePolicy(allow_private=True))

    def clipqueue(mode: str) -> Callable[[Path], Path]:
        return lambda out: extract_clip(ClipRequest(master, start, end, quality, mode), out, options).path

    def seed(out: Path) -> Path:
        path = out / "seed.mp4"
        _run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-ss", str(start), "-to", str(end),
              "-i", media, "-c", "copy", "-avoid_negative_ts", "make_zero", str(path)])
        return path

    def ytdlp(forced: bool) -> Callable[[Path], Path]:
        def run(out: Path) -> Path:
            path = out / "ytdlp.mp4"
            args = [sys.executable, "-m", "yt_dlp", "--quiet", "--no-warnings", "--no-part", "-o", str(path),
                    "--download-sections", f"*{start}-{end}", media]
            if forced:
                args.insert(3, "--force-keyframes-at-cuts")
            _run(args)
            return path
        return run

    def streamlink(out: Path) -> Path:
        path = out / "streamlink.ts"
        offset = time.strftime("%H:%M:%S", time.gmtime(start)) + f"{start % 1:.3f}"[1:]
        _run([sys.executable, "-m", "streamlink", "--quiet", "--hls-start-offset", offset,
              "--hls-duration", f"{end - start:.3f}", "-o", str(path), f"hls://{media}", "best"])
        return path

    found = {
        "clipqueue accurate": clipqueue("accurate"),
        "clipqueue copy": clipqueue("copy"),
        "seed ffmpeg -c copy": seed,
    }
    if _installed("yt_dlp"):
        found["yt-dlp sections"] = ytdlp(False)
        found["yt-dlp forced keyframes"] = ytdlp(True)
    if _installed("streamlink"):
        found["streamlink offset"] = streamlink
    return found


def _installed(module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    if probe.returncode != 0:
        print(f"(skipping {module}: not installed; pip install {module.replace('_', '-')})", file=sys.stderr)
    return probe.returncode == 0


def measure(path: Path, outcome: Outcome) -> None:
    """Record where the clip starts and ends in the VOD from its decoded frame numbers."""
    shown = read_frame_ids(path)
    stored = read_frame_ids(path, ignore_editlist=True)
    outcome.shown, outcome.stored = len(shown), len(stored)
    if shown:
        outcome.start, outcome.end = shown[0] / FPS, (shown[-1] + 1) / FPS


def run_profile(root: Path, name: str, behaviour: dict, start: float, end: float, quality: str, runs: int) -> dict[str, Outcome]:
    with CdnProcess(root, **behaviour) as server:
        master = f"{server.url}/master.m3u8"
        media = f"{server.url}/{quality}/index.m3u8"
        competitors = tools(master, media, start, end, quality)
        outcomes = {label: Outcome() for label in competitors}
        for round_number in range(runs):  # interleaved, so drift in the machine's load hits every tool alike
            for label, tool in competitors.items():
                outcome = outcomes[label]
                if outcome.error:
                    continue
                scratch = Path(tempfile.mkdtemp(prefix="bench-"))
                try:
                    server.bytes_sent(reset=True)
                    began = time.perf_counter()
                    path = tool(scratch)
                    outcome.times.append(time.perf_counter() - began)
                    outcome.bytes.append(server.bytes_sent())
                    if round_number == 0:
                        measure(path, outcome)
                except Exception as exc:  # a competitor failing is a result, not a crash of the bench
                    detail = getattr(exc, "stderr", b"") or b""
                    outcome.error = f"{exc.__class__.__name__}: {detail.decode(errors='replace')[-200:] or exc}"
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            print(f"  {name}: round {round_number + 1}/{runs} done", file=sys.stderr)
    return outcomes


def overlapping_bytes(root: Path, quality: str, start: float, end: float) -> int:
    playlist = root / quality / "index.m3u8"
    media = parse_media(playlist.read_text(), f"http://x/{quality}/index.m3u8")
    return sum((root / quality / s.url.rsplit("/", 1)[1]).stat().st_size for s in select_segments(media, start, end))


def report(name: str, outcomes: dict[str, Outcome], start: float, end: float, needed: int) -> None:
    print(f"\n### {name}  (clip {start}-{end} s, overlapping segments {needed / 1e6:.1f} MB)\n")
    print("| tool | median s | MB fetched | starts at (Δ s) | ends at (Δ s) | frames stored/shown |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {}
    for label, o in outcomes.items():
        if o.error or not o.times:
            print(f"| {label} | failed: {o.error} | | | | |")
            continue
        medians[label] = statistics.median(o.times)
        place = (lambda t, asked: f"{t:.3f} ({t - asked:+.3f})" if t is not None else "?")
        print(f"| {label} | {medians[label]:.2f} | {statistics.median(o.bytes) / 1e6:.1f} | {place(o.start, start)} "
              f"| {place(o.end, end)} | {o.stored}/{o.shown} |")

    def ratio(a: str, b: str) -> str:
        return f"{medians[a] / medians[b]:.2f}" if a in medians and b in medians else "n/a"

    accurate = outcomes.get("clipqueue accurate")
    print("\n| target | measured | met |")
    print("|---|---:|---|")
    if accurate and accurate.bytes:
        fetched = statistics.median(accurate.bytes) / needed
        print(f"| bytes ≤ 1.05 × overlapping segments | {fetched:.3f} | {'yes' if fetched <= 1.05 else 'NO'} |")
    rows = [("copy ≤ 0.5 × seed", ratio("clipqueue copy", "seed ffmpeg -c copy"), 0.5),
            ("accurate ≤ 1.0 × seed", ratio("clipqueue accurate", "seed ffmpeg -c copy"), 1.0),
            ("accurate ≤ 0.25 × yt-dlp forced keyframes", ratio("clipqueue accurate", "yt-dlp forced keyframes"), 0.25)]
    for label, value, limit in rows:
        met = "n/a" if value == "n/a" else ("yes" if float(value) <= limit else "NO")
        print(f"| {label} | {value} | {met} |")
    if accurate and accurate.start is not None:
        exact = abs(accurate.start - start) <= 1 / FPS and abs(accurate.end - end) <= 1 / FPS
        print(f"| accurate within one frame, 0 hidden pre-roll frames | start {accurate.start - start:+.3f}, "
              f"end {accurate.end - end:+.3f}, hidden {accurate.stored - accurate.shown} | "
              f"{'yes' if exact and accurate.stored == accurate.shown else 'NO'} |")


def ensure_vod(vod_dir: Path, duration: float, start: float, end: float) -> None:
    """Generate the benchmark VOD once; later runs (and bench.service) reuse it."""
    marker = vod_dir / ".complete"
    if marker.exists():
        return
    print(f"generating the {duration:.0f} s benchmark VOD in {vod_dir} (once)...", file=sys.stderr)
    shutil.rmtree(vod_dir, ignore_errors=True)
    generate_long_hls_vod(vod_dir, duration=duration, unique=(start - 20, end + 20))
    marker.write_text("ok\n")


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """The VOD, range, quality, rounds and profiles both benchmarks take."""
    parser.add_argument("--vod-dir", type=Path, default=Path(tempfile.gettempdir()) / "clipqueue-bench-vod")
    parser.add_argument("--duration", type=float, default=3600)
    parser.add_argument("--start", type=float, default=1815.4)
    parser.add_argument("--end", type=float, default=1845.4)
    parser.add_argument("--quality", default="1080p")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", choices=list(PROFILES), action="append")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.extract", description=__doc__)
    add_clip_arguments(parser)
    args = parser.parse_args(argv)

    ensure_vod(args.vod_dir, args.duration, args.start, args.end)
    needed = overlapping_bytes(args.vod_dir, args.quality, args.start, args.end)
    for name in args.profile or list(PROFILES):
        outcomes = run_profile(args.vod_dir, name, PROFILES[name], args.start, args.end, args.quality, args.runs)
        report(name, outcomes, args.start, args.end, needed)


if __name__ == "__main__":
    main()
