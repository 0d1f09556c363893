"""ffmpeg never outlives the worker process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.services import wait_until

# A pool process running a long ffmpeg through run_ffmpeg, as a job would.
CHILD = """
import sys
from clipqueue.media.process import run_ffmpeg
run_ffmpeg(["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5",
            "-t", "300", "-metadata", "comment=" + sys.argv[1], "-f", "null", "-"], timeout=600)
"""


def _ffmpeg_with(marker: str) -> list[str]:
    listing = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if marker in line and "ffmpeg" in line and "python" not in line]


def test_ffmpeg_dies_when_its_worker_process_is_killed():
    marker = f"orphan-check-{os.getpid()}-{time.monotonic_ns()}"
    child = subprocess.Popen([sys.executable, "-c", CHILD, marker])
    try:
        wait_until(lambda: _ffmpeg_with(marker), 20, what="ffmpeg to start")
        child.send_signal(signal.SIGKILL)  # as a hard time limit does to a pool process
        child.wait(10)
        wait_until(lambda: not _ffmpeg_with(marker), 10, what="the orphaned ffmpeg to die")
    finally:
        for line in _ffmpeg_with(marker):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        if child.poll() is None:
            child.kill()
