"""List the packets of a local MPEG-TS file: timestamps, keyframes and byte positions, in decode order."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import av

from clipqueue.exceptions import InvalidMedia
from clipqueue.media.process import without_locations


def demuxer(path: Path) -> str:
    """FFmpeg's demuxer for one of our own source files: MPEG-TS, or MP4 (fMP4 that MPEG-TS cannot carry)."""
    return "mov" if path.suffix == ".mp4" else "mpegts"


@dataclass(frozen=True)
class Packet:
    pts: float  # seconds, file timestamps
    dts: float
    key: bool
    pos: int = -1  # byte offset in the file where the packet starts, -1 if unknown


@dataclass(frozen=True)
class Streams:
    """Packets of the first video and audio stream, in decode order."""

    video: list[Packet]
    audio: list[Packet]
    audio_frame: float  # seconds per audio packet
    codec: str | None
    size: tuple[int, int] | None = None  # of the first video frames
    tables_end: int = -1  # byte offset of the first packet: before it, MPEG-TS tables (PAT, PMT)


def probe_streams(path: Path) -> Streams:
    """List the packets of the first video and audio stream of the MPEG-TS ``path``.

    Demuxed in this process with PyAV (FFmpeg's libraries): listing a clip's
    packets is cheaper than starting an ffprobe, which a cut would do several
    times.
    """
    try:
        container = av.open(str(path), format=demuxer(path), options={"protocol_whitelist": "file"})
    except av.FFmpegError as exc:
        raise InvalidMedia(f"cannot read the fetched media: {without_locations(str(exc), [str(path)])}") from exc
    with container:
        video = next(iter(container.streams.video), None)
        audio = next(iter(container.streams.audio), None)
        listed: dict[int, list[Packet]] = {s.index: [] for s in (video, audio) if s is not None}
        durations: dict[int, list[float]] = {index: [] for index in listed}
        codec = video.codec_context.codec.canonical_name if video else None
        size = (video.codec_context.width, video.codec_context.height) if video and video.codec_context.width else None
        first_position = -1
        try:
            for packet in container.demux():
                if packet.pos is not None and packet.pos >= 0 and (first_position < 0 or packet.pos < first_position):
                    first_position = packet.pos
                chosen = listed.get(packet.stream.index)
                if chosen is None or packet.pts is None or packet.is_discard:
                    continue
                num, den = packet.stream.time_base.numerator, packet.stream.time_base.denominator
                dts = packet.dts if packet.dts is not None else packet.pts
                chosen.append(Packet(packet.pts * num / den, dts * num / den, packet.is_keyframe,
                                     packet.pos if packet.pos is not None else -1))
                if packet.duration:
                    durations[packet.stream.index].append(packet.duration * num / den)
        except av.FFmpegError as exc:
            raise InvalidMedia(f"cannot read the fetched media: {without_locations(str(exc), [str(path)])}") from exc
        video_index = video.index if video else None
        audio_index = audio.index if audio else None

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2] if values else 0.0

    video_packets = listed.get(video_index, [])
    audio_packets = listed.get(audio_index, [])
    if not video_packets and not audio_packets:
        raise InvalidMedia("the fetched media has no audio or video packets")
    audio_frame = median(durations[audio_index]) if audio_index is not None else 0.0
    return Streams(video_packets, audio_packets, audio_frame, codec, size, first_position)


def join_streams(parts: list[tuple[Streams, int]]) -> Streams:
    """The packet listing of MPEG-TS files joined end to end, from each file's listing and its byte offset in the join.

    HLS segments hold whole packets, so the join holds the same packets with
    the same timestamps; only their positions move by the bytes before them.
    """
    def moved(packets: list[Packet], offset: int) -> list[Packet]:
        return [replace(p, pos=p.pos + offset) if p.pos >= 0 else p for p in packets]

    first = parts[0][0]
    return Streams(
        video=[p for streams, offset in parts for p in moved(streams.video, offset)],
        audio=[p for streams, offset in parts for p in moved(streams.audio, offset)],
        audio_frame=next((streams.audio_frame for streams, _ in parts if streams.audio), 0.0),
        codec=first.codec, size=first.size, tables_end=first.tables_end,
    )
