"""Re-encode a run of a source's frames, decoding only the packets they need."""

from __future__ import annotations

from pathlib import Path

from clipqueue.media.h264 import ParameterSets, parameter_sets
from clipqueue.media.mux import copy_gop_bytes, ffmpeg_command, select_copy, ts_input
from clipqueue.media.packets import Streams
from clipqueue.media.process import run_ffmpeg
from clipqueue.media.source import LocalSource
from clipqueue.media.timeline import Timeline, closed_packets, key_indices


def encode_frames(source: LocalSource, streams: Streams, timeline: Timeline, first: int, last: int,
                  encoder: list[str], out: Path, scale_to: tuple[int, int] | None = None
                  ) -> ParameterSets:
    """Encode display frames ``first..last`` to MPEG-TS, scaled to ``scale_to`` if given; return the
    output's parameter sets (as :func:`parameter_sets`).

    Only the packets they need are decoded: from the keyframe before them to
    the first point in decode order where every frame up to ``last`` is
    decoded, copied out by byte range (or by timestamp, whole GOPs), which is
    exact and far cheaper than seeking in MPEG-TS.
    """
    keys = key_indices(streams, timeline)
    decode_from = max((k for k in keys if k <= first), default=0)
    decode_to = min((k for k in keys if k > last), default=None)
    closing = next((position for position, shown in closed_packets(streams, timeline, decode_from)
                    if shown >= last), None)
    after = streams.video[closing + 1].pts if closing is not None and closing + 1 < len(streams.video) else None
    gops = out.with_suffix(".gops.ts")
    if source.joined_runs or not copy_gop_bytes(source.path, streams, timeline.pts[decode_from], after, gops):
        upper = timeline.pts[decode_to] - 1e-4 if decode_to is not None else timeline.pts[-1] + 1e-4
        select_copy(source.path, gops, v=(timeline.pts[decode_from] - 1e-4, upper))
    low = timeline.pts[first] - timeline.frame / 2
    high = timeline.pts[last] + timeline.frame / 2
    scale = f",scale={scale_to[0]}:{scale_to[1]}" if scale_to else ""
    args = ffmpeg_command("-copyts", *ts_input(gops), "-map", "0:v:0",
                          "-vf", f"select='between(pts*TB\\,{low:.6f}\\,{high:.6f})'" + scale,
                          "-fps_mode", "passthrough", *encoder, "-f", "mpegts", str(out))
    try:
        run_ffmpeg(args, what="re-encoding frames")
    finally:
        gops.unlink(missing_ok=True)
    return parameter_sets(out)
