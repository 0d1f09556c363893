"""H.264 parameter sets read as bytes: the fields agree with FFmpeg's own parser, and equal headers are equal bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clipqueue.media.h264 import matching_encoder, nal_units, parameter_set_list, parameter_sets, rate_control
from clipqueue.media.packets import probe_streams
from clipqueue.media.source import LocalSource
from clipqueue.media.timeline import build_timeline

ENCODINGS = {  # x264 choices that show in the headers
    "cavlc": ["-x264-params", "cabac=0:bframes=3:keyint=60"],
    "main": ["-profile:v", "main"],
    "baseline": ["-profile:v", "baseline"],
    "nal-hrd": ["-x264-params", "nal-hrd=vbr:bitrate=500:vbv-maxrate=600:vbv-bufsize=1200"],
    "no-weightp": ["-x264-params", "weightp=0:8x8dct=0:chroma-qp-offset=2"],
    "cropped": ["-vf", "scale=630:350"],
}


def _encode(source: Path, out: Path, options: list[str]) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), "-frames:v", "40", *options, "-an",
                    "-f", "mpegts", str(out)], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def segment(media_root) -> Path:
    return media_root / "ts" / "360p" / "0.ts"


@pytest.fixture(scope="module")
def encodings(segment, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("encodings")
    made = {"source": segment}
    for name, options in ENCODINGS.items():
        made[name] = _encode(segment, folder / f"{name}.ts", ["-c:v", "libx264", "-preset", "veryfast", *options])
    return made


def _ffmpeg_fields(path: Path) -> dict[str, dict[str, int]]:
    """The first SPS and PPS of ``path`` as FFmpeg's trace_headers bitstream filter prints them: the reference."""
    log = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "info", "-i", str(path), "-map", "0:v:0", "-c", "copy",
                          "-bsf:v", "filter_units=pass_types=7|8,trace_headers", "-frames:v", "1", "-f", "null", "-"],
                         capture_output=True, text=True, timeout=60).stderr
    found: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if "[trace_headers" not in line:
            continue
        text = line.split("]", 1)[1].strip()
        if text in ("Sequence Parameter Set", "Picture Parameter Set"):
            current = found.setdefault("sps" if text.startswith("Sequence") else "pps", {})
            continue
        parts = text.split()
        if current is not None and len(parts) >= 4 and parts[-2] == "=" and parts[0].isdigit():
            current.setdefault(parts[1], int(parts[-1]))
    return found


@pytest.mark.parametrize("name", ["source", *ENCODINGS])
def test_fields_read_from_bytes_are_ffmpegs(encodings, name):
    reference = _ffmpeg_fields(encodings[name])
    fields = parameter_sets(encodings[name]).fields()
    assert set(fields) == {"sps", "pps"}
    for kind in ("sps", "pps"):
        assert fields[kind] and {k: reference[kind].get(k) for k in fields[kind]} == fields[kind]


def test_equal_headers_are_equal_bytes_and_any_difference_shows(encodings):
    read = {name: parameter_sets(path) for name, path in encodings.items()}
    reference = {name: _ffmpeg_fields(path) for name, path in encodings.items()}
    for a in read:
        for b in read:
            assert (read[a] == read[b]) == (reference[a] == reference[b]), (a, b)


def test_an_encode_with_the_matching_options_has_the_sources_headers_byte_for_byte(segment, tmp_path):
    headers = parameter_sets(segment)
    streams = probe_streams(segment)
    timeline = build_timeline(streams, LocalSource(segment, 0.0))
    encoder = matching_encoder(headers, streams, timeline)
    assert encoder is not None  # as a smart cut encodes its head and tail:
    assert parameter_sets(_encode(segment, tmp_path / "matched.ts", encoder + rate_control(streams, segment, timeline))) \
        == headers


def test_nal_units_lose_start_codes_emulation_prevention_and_trailing_zeros():
    stream = b"\x00\x00\x00\x01\x67\x64\x00\x00\x03\x01\x80\x00\x00\x01\x68\xee\x00\x00\x00\x01\x65\x88"
    assert nal_units(stream) == [b"\x67\x64\x00\x00\x01\x80", b"\x68\xee", b"\x65\x88"]
    assert parameter_set_list(stream) == [("sps", b"\x67\x64\x00\x00\x01\x80"), ("pps", b"\x68\xee")]
