"""What previews, thumbnails and the portrait version cost per clip, in CPU seconds of FFmpeg, against the clip.

Run: ``python -m bench.outputs [--runs 3]``. A 40 s VOD with 1080p and 720p
variants (made once in ``$TMPDIR/clipqueue-bench-outputs-vod``) is served on
loopback; each round cuts the same 30 s range (accurate mode, as the service
does, with its thumbnail) and then makes, from that clip, what a ready clip
gets: thumbnails and preview alone, then with the centre-cropped portrait, then
with the blurred-fill portrait (each a separate run of
:func:`clipqueue.media.renditions.make_renditions`, as the job makes one).

CPU time is that of the child processes (FFmpeg, ffprobe), read from
``getrusage(RUSAGE_CHILDREN)`` around each step; the table shows medians and
the ratio of "clip + outputs" to "clip alone".
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from clipqueue.media.renditions import make_renditions
from clipqueue.urlpolicy import SourcePolicy
from samplevod.server import serve_directory
from samplevod.vod import BENCH_VARIANTS, generate_hls_vod

STEPS = ("clip alone", "+ thumbnails, preview", "+ portrait crop", "+ portrait blur")


def ensure_vod(root: Path) -> Path:
    if not (root / "master.m3u8").exists():
        variants = [v for v in BENCH_VARIANTS if v[0] in ("1080p", "720p")]
        generate_hls_vod(root, duration=40, segment_seconds=10, variants=variants)
    return root


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(work: Callable[[], object]) -> tuple[float, float]:
    """``work``'s CPU seconds in child processes and its wall seconds."""
    cpu, wall = children_cpu(), time.perf_counter()
    work()
    return children_cpu() - cpu, time.perf_counter() - wall


def one_round(master: str, quality: str, start: float, end: float, scratch: Path) -> dict[str, tuple[float, float]]:
    options = ExtractOptions(policy=SourcePolicy(allow_private=True), thumbnail=True)
    folder = Path(tempfile.mkdtemp(dir=scratch))
    clip = []
    times = {STEPS[0]: measured(lambda: clip.append(
        extract_clip(ClipRequest(master, start, end, quality=quality), folder, options)))}
    result = clip[0]
    for step, fill in zip(STEPS[1:], (None, "crop", "blur")):
        out = Path(tempfile.mkdtemp(dir=folder))
        times[step] = measured(lambda: make_renditions(
            result.path, out, width=result.width, height=result.height, duration=result.duration,
            portrait_fill=fill, poster_width=None if result.thumbnail else 480))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outputs", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--start", type=float, default=5.4)
    parser.add_argument("--end", type=float, default=35.4)
    parser.add_argument("--vod-dir", type=Path, default=Path(tempfile.gettempdir()) / "clipqueue-bench-outputs-vod")
    args = parser.parse_args(argv)
    root = ensure_vod(args.vod_dir)
    server = serve_directory(root)
    qualities = ("720p", "1080p")
    samples = {(q, step): [] for q in qualities for step in STEPS}
    try:
        with tempfile.TemporaryDirectory(prefix="clipqueue-bench-outputs-") as scratch:
            for _ in range(args.runs):  # interleaved, so a change in the machine's load touches every row alike
                for quality in qualities:
                    for step, cost in one_round(f"{server.url}/master.m3u8", quality, args.start, args.end,
                                                Path(scratch)).items():
                        samples[quality, step].append(cost)
    finally:
        server.stop()

    print(f"\n{args.end - args.start:g} s clip, accurate mode; medians of {args.runs} runs; "
          "CPU = FFmpeg and ffprobe children (user + system)\n")
    print("| clip | step | CPU s | wall s | (clip + step) / clip alone, CPU |")
    print("|---|---|---:|---:|---:|")
    for quality in qualities:
        base = statistics.median(cpu for cpu, _ in samples[quality, STEPS[0]])
        for step in STEPS:
            cpu = statistics.median(c for c, _ in samples[quality, step])
            wall = statistics.median(w for _, w in samples[quality, step])
            ratio = "1.00" if step == STEPS[0] else f"{(base + cpu) / base:.2f}"
            print(f"| {quality} | {step} | {cpu:.2f} | {wall:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
