"""Generate Twitch-like sample VODs (HLS master + variants, or a progressive MP4).

The video is encoded like a real stream: x264 with B-frames, a fixed keyframe
interval (no scene-cut keyframes) and AAC audio. Every frame carries its index
(see :mod:`samplevod.frames`), so clip accuracy can be measured from
decoded frames.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from samplevod.frames import FRAME_ID_HEIGHT, FRAME_ID_WIDTH, frame_id_expression

# Each variant is named for its picture height, as Twitch's are.
DEFAULT_VARIANTS = (("360p", 640, 360, 800_000), ("240p", 426, 240, 400_000))  # small and quick, for tests
DEMO_VARIANTS = (("720p", 1280, 720, 2_500_000), ("480p", 854, 480, 1_200_000))  # the README's demo
FULL_PLAYLIST_NAME = ".index-full.m3u8"  # the whole VOD, published bit by bit for live tests


@dataclass(frozen=True)
class Variant:
    """One rendition: ``width == 0`` means audio only."""

    name: str
    width: int
    height: int
    bandwidth: int


def _variants(variants: Iterable[Sequence]) -> list[Variant]:
    return [v if isinstance(v, Variant) else Variant(*v) for v in variants]


def _run(stream) -> None:
    args = stream.compile()
    result = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(args)}\n{result.stderr.decode(errors='replace')[-2000:]}")


def _sources(variant: Variant, duration: float, fps: int, audio: bool, frame_offset: int, grain: int = 0):
    """Return (video, audio) filter streams for ``variant``; either may be None.

    ``grain`` adds moving noise so the encoder needs a stream-like bitrate.
    """
    video = None
    if variant.width:
        background = ffmpeg.input(
            f"testsrc2=size={variant.width}x{variant.height}:rate={fps}:duration={duration}", f="lavfi"
        )
        if grain:
            background = background.filter("noise", alls=grain, allf="t")
        strip = (
            ffmpeg.input(f"color=black:size={FRAME_ID_WIDTH}x{FRAME_ID_HEIGHT}:rate={fps}:duration={duration}", f="lavfi")
            .filter("format", "gray")
            .filter("geq", lum=frame_id_expression(frame_offset))
        )
        video = background.overlay(strip, x=0, y=0).filter("format", "yuv420p")
    sound = None
    if audio or not variant.width:
        # A beep each second makes audio drift audible when checking a clip by ear.
        sound = ffmpeg.input(f"sine=frequency=440:beep_factor=4:sample_rate=48000:duration={duration}", f="lavfi")
    return video, sound


def _codec_args(variant: Variant, fps: int, gop_seconds: float, preset: str = "veryfast", codec: str = "h264",
                open_gop: bool = False, x265_preset: str = "ultrafast") -> dict:
    args: dict = {}
    if variant.width and codec == "hevc":
        # x265 like an Enhanced Broadcasting rendition: B-frames, fixed keyframe interval, tagged hvc1.
        gop = int(round(gop_seconds * fps))
        params = (f"bframes=4:keyint={gop}:min-keyint={gop}:scenecut=0:open-gop={int(open_gop)}"
                  ":log-level=error")
        args.update({
            "c:v": "libx265", "preset": x265_preset, "x265-params": params, "b:v": variant.bandwidth,
            "maxrate": variant.bandwidth, "bufsize": variant.bandwidth * 2, "tag:v": "hvc1", "r": fps,
        })
    elif variant.width and codec == "av1":
        # SVT-AV1's fastest preset: a few seconds for a short small rendition.
        gop = int(round(gop_seconds * fps))
        args.update({"c:v": "libsvtav1", "preset": 12, "g": gop, "b:v": variant.bandwidth, "r": fps})
    elif variant.width:
        gop = int(round(gop_seconds * fps))
        args.update({
            "c:v": "libx264", "preset": preset, "profile:v": "high", "bf": 3, "g": gop,
            "keyint_min": gop, "sc_threshold": 0, "b:v": variant.bandwidth, "maxrate": variant.bandwidth,
            "bufsize": variant.bandwidth * 2, "r": fps,
        })
    args.update({"c:a": "aac", "b:a": "96k", "ac": 2})
    return args


def _encode(output: Path, variant: Variant, duration: float, fps: int, gop_seconds: float,
            audio: bool, frame_offset: int = 0, grain: int = 0, preset: str = "veryfast", codec: str = "h264",
            open_gop: bool = False, x265_preset: str = "ultrafast", **output_args) -> None:
    video, sound = _sources(variant, duration, fps, audio, frame_offset, grain)
    streams = [s for s in (video, sound) if s is not None]
    args = _codec_args(variant, fps, gop_seconds, preset, codec, open_gop, x265_preset)
    if sound is None:
        args.pop("c:a"), args.pop("b:a"), args.pop("ac")
    args.update(output_args)
    _run(ffmpeg.output(*streams, str(output), **args).global_args("-nostdin", "-hide_banner").overwrite_output())


def _write_master(out_dir: Path, variants: list[Variant], fmp4: bool, codec: str = "h264") -> Path:
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{6 if fmp4 else 3}"]
    for v in variants:
        lines.append(f'#EXT-X-MEDIA:TYPE=VIDEO,GROUP-ID="{v.name}",NAME="{v.name}",AUTOSELECT=YES,DEFAULT=YES')
        video_codec = {"hevc": "hvc1.1.6.L93.B0", "av1": "av01.0.04M.08"}.get(codec, "avc1.64001F")
        codecs = "mp4a.40.2" if not v.width else f"{video_codec},mp4a.40.2"
        resolution = f",RESOLUTION={v.width}x{v.height}" if v.width else ""
        lines.append(f'#EXT-X-STREAM-INF:BANDWIDTH={v.bandwidth}{resolution},CODECS="{codecs}",VIDEO="{v.name}"')
        lines.append(f"{v.name}/index.m3u8")
    master = out_dir / "master.m3u8"
    master.write_text("\n".join(lines) + "\n")
    return master


def _rename_muted(variant_dir: Path, playlist: Path, muted: set[int], ext: str) -> None:
    text = playlist.read_text()
    for n in muted:
        segment = variant_dir / f"{n}.{ext}"
        if segment.exists():
            segment.rename(variant_dir / f"{n}-muted.{ext}")
            text = re.sub(rf"(?m)^{n}\.{ext}$", f"{n}-muted.{ext}", text)
    playlist.write_text(text)


def _publish(variant_dir: Path, segments: int) -> bool:
    """Write ``index.m3u8`` as an EVENT playlist holding the first ``segments``; True once complete."""
    full = (variant_dir / FULL_PLAYLIST_NAME).read_text().splitlines()
    header, body, seen = [], [], 0
    for line in full:
        if line.startswith("#EXT-X-PLAYLIST-TYPE"):
            header.append("#EXT-X-PLAYLIST-TYPE:EVENT")
        elif line == "#EXT-X-ENDLIST":
            continue
        elif not body and not line.startswith("#EXTINF") and seen == 0:
            header.append(line)
        else:
            if line.startswith("#EXTINF"):
                if seen == segments:
                    break
                seen += 1
            body.append(line)
    total = sum(1 for line in full if line.startswith("#EXTINF"))
    done = seen >= total
    lines = header + body + (["#EXT-X-ENDLIST"] if done else [])
    tmp = variant_dir / "index.m3u8.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(variant_dir / "index.m3u8")  # readers never see a half-written playlist
    return done


def generate_hls_vod(
    out_dir: Path,
    duration: float = 60,
    segment_seconds: float = 10,
    variants=DEFAULT_VARIANTS,
    fmp4: bool = False,
    muted_segments: Iterable[int] = (),
    gop_seconds: float = 2,
    fps: int = 30,
    audio: bool = True,
    live: bool = False,
    live_segments: int = 1,
    preset: str = "veryfast",
    codec: str = "h264",
    open_gop: bool = False,
    x265_preset: str = "ultrafast",
) -> Path:
    """Write an HLS VOD (``master.m3u8`` + ``<variant>/index.m3u8``) and return the master path.

    Segments are ``<n>.ts`` (or ``<n>.m4s`` after an ``init-0.mp4``, as Twitch names it, with ``fmp4``);
    those in ``muted_segments`` are named ``<n>-muted.<ext>`` like Twitch's.
    With ``live`` each media playlist is an EVENT playlist without ENDLIST
    holding the first ``live_segments`` segments; publish more with
    :func:`append_live_segments`. ``preset`` is x264's (B-frames stay on with any but ultrafast).
    ``codec`` "hevc" encodes with x265 (4 B-frames, ``x265_preset``), closed GOPs as hardware
    encoders make unless ``open_gop``; "av1" with SVT-AV1 (use ``fmp4``: MPEG-TS cannot carry it).
    (FFmpeg 5.1's fMP4 muxer writes a wrong composition time for an open GOP's keyframe at
    each fragment start: use ``open_gop`` with MPEG-TS segments.)
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = _variants(variants)
    ext = "m4s" if fmp4 else "ts"
    muted = set(muted_segments)

    def build(variant: Variant) -> None:
        variant_dir = out_dir / variant.name
        variant_dir.mkdir(exist_ok=True)
        playlist = variant_dir / "index.m3u8"
        hls_args = {
            "f": "hls", "hls_time": segment_seconds, "hls_playlist_type": "vod",
            "hls_segment_filename": str(variant_dir / f"%d.{ext}"), "hls_flags": "independent_segments",
        }
        if fmp4:
            hls_args.update({"hls_segment_type": "fmp4", "hls_fmp4_init_filename": "init-0.mp4"})
        _encode(playlist, variant, duration, fps, gop_seconds, audio, preset=preset, codec=codec,
                open_gop=open_gop, x265_preset=x265_preset, **hls_args)
        _rename_muted(variant_dir, playlist, muted, ext)
        if live:
            playlist.replace(variant_dir / FULL_PLAYLIST_NAME)
            _publish(variant_dir, live_segments)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(build, chosen))
    return _write_master(out_dir, chosen, fmp4, codec)


def append_live_segments(master: Path, count: int = 1) -> bool:
    """Publish ``count`` more segments of a live VOD in every variant; True once it has ended."""
    done = True
    for variant_dir in sorted(p for p in Path(master).parent.iterdir() if (p / FULL_PLAYLIST_NAME).exists()):
        published = (variant_dir / "index.m3u8").read_text().count("#EXTINF")
        done = _publish(variant_dir, published + count) and done
    return done


def generate_progressive_mp4(path: Path, duration: float = 30, width: int = 640, height: int = 360,
                             fps: int = 30, gop_seconds: float = 2, audio: bool = True) -> Path:
    """Write a progressive (faststart) MP4 with B-frames and numbered frames; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _encode(path, Variant("source", width, height, 1_000_000), duration, fps, gop_seconds, audio,
            movflags="+faststart")
    return path


BENCH_VARIANTS = (("1080p", 1920, 1080, 6_500_000), ("720p", 1280, 720, 3_000_000), ("480p", 852, 480, 1_500_000))


def generate_long_hls_vod(out_dir: Path, duration: float = 3600, unique: tuple[float, float] = (1800, 1860),
                          variants=BENCH_VARIANTS, muted_segments: Iterable[int] = (3, 4, 200, 201, 330),
                          segment_seconds: float = 10, fps: int = 30, gop_seconds: float = 2) -> Path:
    """Write a long Twitch-like VOD cheaply and return its master playlist.

    Only ``unique`` (a window aligned to segments, where benchmarks cut) is
    encoded with its true frame numbers; the rest repeats one encoded
    segment, re-muxed with continuous timestamps into ``segment_seconds`` segments.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = _variants(variants)
    low = int(unique[0] // segment_seconds * segment_seconds)
    high = int(-(-unique[1] // segment_seconds) * segment_seconds)

    def build(variant: Variant) -> None:
        variant_dir = out_dir / variant.name
        variant_dir.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
            scratch_dir = Path(scratch)
            filler = scratch_dir / "filler.ts"
            window = scratch_dir / "window.ts"
            _encode(filler, variant, segment_seconds, fps, gop_seconds, True, grain=25, f="mpegts")
            _encode(window, variant, high - low, fps, gop_seconds, True, frame_offset=int(low * fps),
                    grain=25, f="mpegts")
            repeats_before = int(low // segment_seconds)
            repeats_after = int(max(0, duration - high) // segment_seconds)
            listing = scratch_dir / "parts.ffconcat"
            # Explicit durations keep the timeline exact (audio runs a fraction of a frame past video).
            filler_entry = f"file '{filler}'\nduration {segment_seconds}"
            entries = ([filler_entry] * repeats_before + [f"file '{window}'\nduration {high - low}"]
                       + [filler_entry] * repeats_after)
            listing.write_text("ffconcat version 1.0\n" + "\n".join(entries) + "\n")
            playlist = variant_dir / "index.m3u8"
            _run(ffmpeg.input(str(listing), f="concat", safe=0)
                 .output(str(playlist), c="copy", f="hls", hls_time=segment_seconds, hls_playlist_type="vod",
                         hls_segment_filename=str(variant_dir / "%d.ts"), hls_flags="independent_segments")
                 .global_args("-nostdin", "-hide_banner").overwrite_output())
        _rename_muted(variant_dir, playlist, set(muted_segments), "ts")

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(build, chosen))
    return _write_master(out_dir, chosen, False)
