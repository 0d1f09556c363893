"""FFmpeg commands and byte surgery on our own MPEG-TS files: packet selection, byte ranges, concatenation, MP4 muxing.

Every FFmpeg input names the protocols and demuxers it may use: FFmpeg
never opens a URL or a file named inside the media (an HLS playlist posing
as a segment, an AVI with an embedded playlist).
"""

from __future__ import annotations

from pathlib import Path

from clipqueue.media.packets import Streams, demuxer
from clipqueue.media.process import run_ffmpeg
from clipqueue.media.timeline import decode_index

MP4_FLAGS = "+faststart+negative_cts_offsets"  # first frame at 0 without an edit list despite B-frames

TS_SYNC_BYTE = 0x47
TS_PACKET_BYTES = 188
MAX_TS_TABLES_BYTES = 64 * 1024  # more "tables" than this before the first packet: not a file we understand


def ffmpeg_command(*args: str) -> list[str]:
    """An ffmpeg command line with ``args``: errors only on its log, no standard input, outputs overwritten."""
    return ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]


def ts_input(path: Path) -> list[str]:
    """Input options for one of our own MPEG-TS (or, named .mp4, MP4) files: the file protocol and that
    demuxer only."""
    return ["-protocol_whitelist", "file", "-f", demuxer(path), "-i", str(path)]


def keep_between(low: float, high: float) -> str:
    """A bitstream filter passing only the packets with a timestamp in ``[low, high]`` seconds."""
    return f"noise=drop='not(between(pts*tb\\,{low:.6f}\\,{high:.6f}))'"


def select_copy(source: Path, out: Path, **ranges: tuple[float, float]) -> None:
    """Copy, per stream (``v=(low, high)``, ``a=...``), the packets with file time in ``[low, high]`` to MPEG-TS ``out``."""
    select_copies(source, {out: ranges})


def select_copies(source: Path, outputs: dict[Path, dict[str, tuple[float, float]]],
                  headers_in: tuple[float, float] | None = None, codec: str = "h264") -> bytes:
    """:func:`select_copy` into several files in one read of ``source``: ``{out: {"v": (low, high), ...}}``.

    With ``headers_in=(low, high)``, also return every H.264 SPS and PPS NAL
    unit (HEVC VPS, SPS and PPS with ``codec`` "hevc") of the video packets in
    that range (an Annex B byte stream), copied out in the same pass; else b"".
    """
    args = ffmpeg_command("-copyts", *ts_input(source))
    for out, ranges in outputs.items():
        for stream in ranges:
            args += ["-map", f"0:{stream}:0"]
        args += ["-c", "copy"]
        for stream, (low, high) in ranges.items():
            args += [f"-bsf:{stream}", keep_between(low, high)]
        args += ["-muxdelay", "0", "-muxpreload", "0", "-f", "mpegts", str(out)]
    if headers_in is None:
        run_ffmpeg(args, what="selecting packets")
        return b""
    # Only the parameter sets (NAL types 7 and 8; HEVC's 32 to 34) pass: a raw file of a few hundred bytes.
    types, raw = ("32|33|34", "hevc") if codec == "hevc" else ("7|8", "h264")
    parameter_sets = next(iter(outputs)).with_suffix(f".parameter-sets.{raw}")
    args += ["-map", "0:v:0", "-c", "copy",
             "-bsf:v", f"{keep_between(*headers_in)},filter_units=pass_types={types}",
             "-f", raw, str(parameter_sets)]
    run_ffmpeg(args, what="selecting packets")
    try:
        return parameter_sets.read_bytes()
    finally:
        parameter_sets.unlink(missing_ok=True)


def write_mp4(video: Path | None, audio: Path | None, output: Path, video_is_concat: bool = False,
              codec: str | None = None) -> None:
    """Write the MP4 ``output`` from a video and an audio file (the same file may hold both).

    HEVC (``codec`` "hevc") is tagged ``hvc1``, as Twitch's renditions are: Apple's players refuse ``hev1``.
    """
    args = ffmpeg_command()
    if video is not None:
        if video_is_concat:
            # Our own listing of our own TS parts; the whitelists pass on to the files it opens.
            args += ["-f", "concat", "-safe", "0", "-protocol_whitelist", "file",
                     "-format_whitelist", "concat,mpegts", "-i", str(video)]
        else:
            args += ts_input(video)
    separate_audio = audio is not None and audio != video
    if separate_audio:
        args += ts_input(audio)
    args += ["-map", "0:v:0"] if video is not None else []
    args += ["-map", f"{1 if video is not None and separate_audio else 0}:a:0"] if audio is not None else []
    args += ["-tag:v", "hvc1"] if video is not None and codec == "hevc" else []
    args += ["-c", "copy", "-movflags", MP4_FLAGS, "-use_editlist", "0", "-f", "mp4", str(output)]
    run_ffmpeg(args, what="writing the clip")


def concat_listing(parts: list[tuple[Path, float]], scratch: Path) -> Path:
    listing = scratch / "parts.ffconcat"
    lines = ["ffconcat version 1.0"]
    for path, duration in parts:
        lines += [f"file '{path.resolve()}'", f"duration {duration:.6f}"]
    listing.write_text("\n".join(lines) + "\n")
    return listing


def copy_byte_range(source: Path, streams: Streams, first: int, last: int, out: Path) -> bool:
    """Copy bytes ``first..last-1`` of the MPEG-TS ``source`` into ``out`` behind the file's tables;
    False (nothing written) unless both are packet boundaries after the tables."""
    if not 0 <= streams.tables_end <= MAX_TS_TABLES_BYTES or first < streams.tables_end or last <= first \
            or first % TS_PACKET_BYTES or last % TS_PACKET_BYTES or streams.tables_end % TS_PACKET_BYTES:
        return False
    with open(source, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read(streams.tables_end))
        src.seek(first)
        remaining = last - first
        while remaining:
            chunk = src.read(min(remaining, 1024 * 1024))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
    return True


def copy_packet(source: Path, streams: Streams, pts: float, out: Path) -> bool:
    """Copy the bytes of the video packet shown at ``pts`` into ``out`` as an MPEG-TS file of its own
    (as :func:`copy_byte_range`, which says whether it could)."""
    index = decode_index(streams, pts)
    end = streams.video[index + 1].pos if index + 1 < len(streams.video) else source.stat().st_size
    return copy_byte_range(source, streams, streams.video[index].pos, end, out)


def copy_gop_bytes(source: Path, streams: Streams, key_pts: float, end_pts: float | None, out: Path) -> bool:
    """Copy the bytes of the video packets from keyframe ``key_pts`` up to the packet ``end_pts`` (or the end)
    of the MPEG-TS ``source`` into ``out``, behind the file's tables; False if the packet positions do not allow it.

    MPEG-TS stores packets in decode order, so that byte range holds every video packet
    between them: reading it instead of the whole file saves a pass over the source.
    """
    positions = {p.pts: p.pos for p in streams.video}
    first = positions.get(key_pts, -1)
    last = positions.get(end_pts, -1) if end_pts is not None else source.stat().st_size
    return copy_byte_range(source, streams, first, last, out)
