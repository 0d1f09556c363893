"""HEVC (H.265) smart cuts: the x265 options whose parameter sets (VPS, SPS, PPS) should be the source's.

As for H.264 (:mod:`clipqueue.media.h264`), a splice is only made when the
re-encoded frames' parameter sets equal the copied packets' byte for byte:
the options here are a guess that the cut checks. They reproduce what an
x265 "ultrafast" encode writes; other encoders (the hardware encoders of
Enhanced Broadcasting) write other headers, and those clips are re-encoded whole.
"""

from __future__ import annotations

from clipqueue.media.h264 import ParameterSets
from clipqueue.media.packets import Streams
from clipqueue.media.timeline import gop_shape

HEVC_PROFILE_MAIN = 1
_PROFILE_BYTE = 3  # general_profile_idc's byte: after the NAL header (2) and the ids and flags (1)


def matching_encoder(headers: ParameterSets, streams: Streams) -> list[str] | None:
    """Return libx265 options whose parameter sets should equal ``headers``, or None if no encode can.

    Only Main profile 8-bit 4:2:0 sources qualify (the general_profile_idc byte).
    The B-frame count and keyframe interval are measured from the packets;
    the chroma sample location stays unspecified, as an encoder fed raw frames writes it.
    """
    if not (headers.vps and headers.sps and headers.pps) or len(headers.sps) <= _PROFILE_BYTE:
        return None
    if headers.sps[_PROFILE_BYTE] & 0x1F != HEVC_PROFILE_MAIN:
        return None
    interval, bframes = gop_shape(streams)
    params = {"bframes": bframes, "keyint": interval, "min-keyint": interval, "scenecut": 0, "open-gop": 0,
              "log-level": "error"}
    return ["-c:v", "libx265", "-preset", "ultrafast",
            "-x265-params", ":".join(f"{k}={v}" for k, v in params.items()),
            "-chroma_sample_location", "unspecified"]
