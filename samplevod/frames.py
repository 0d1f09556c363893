"""Frame numbers burned into sample video, and reading them back from decoded frames.

Sample media carries its absolute frame index as a strip of black/white
blocks in the top-left corner (no fonts needed). Decoding a clip and reading
the strip tells where the clip really starts and ends in the VOD, independent
of container timestamps and edit lists.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

FRAME_ID_BITS = 20
FRAME_ID_BLOCK = 12  # pixels per bit; large enough to survive low-bitrate encoding
FRAME_ID_WIDTH = FRAME_ID_BITS * FRAME_ID_BLOCK
FRAME_ID_HEIGHT = FRAME_ID_BLOCK


def frame_id_expression(frame_offset: int = 0) -> str:
    """Return a ``geq`` luma expression drawing ``N + frame_offset`` as one block per bit."""
    return (
        f"255*mod(floor((N+{int(frame_offset)})/pow(2,floor(X/{FRAME_ID_BLOCK}))),2)"
    )


def read_frame_ids(video: Path, ignore_editlist: bool = False) -> list[int]:
    """Decode ``video`` and return the burned-in frame index of every frame, in display order.

    With ``ignore_editlist`` the MP4 edit list is ignored, so frames a player
    would hide (pre-roll) are returned too: "frames stored" versus "frames shown".
    """
    args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
    if ignore_editlist and Path(video).suffix.lower() in (".mp4", ".m4v", ".mov"):
        args += ["-ignore_editlist", "1"]  # other containers have no edit lists
    args += [
        "-i", str(video), "-map", "0:v:0",
        "-vf", f"crop={FRAME_ID_WIDTH}:{FRAME_ID_HEIGHT}:0:0,format=gray",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-",
    ]
    raw = subprocess.run(args, capture_output=True, check=True).stdout
    frame_size = FRAME_ID_WIDTH * FRAME_ID_HEIGHT
    centre_row = FRAME_ID_HEIGHT // 2
    ids = []
    for start in range(0, len(raw) - frame_size + 1, frame_size):
        row = raw[start + centre_row * FRAME_ID_WIDTH: start + (centre_row + 1) * FRAME_ID_WIDTH]
        value = 0
        for bit in range(FRAME_ID_BITS):
            if row[bit * FRAME_ID_BLOCK + FRAME_ID_BLOCK // 2] >= 128:
                value |= 1 << bit
        ids.append(value)
    return ids
