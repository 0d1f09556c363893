"""ffmpeg never outlives the worker process that started it, sees none of its secrets and names none of its files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from clipqueue.exceptions import InvalidMedia, SourceUnavailable
from clipqueue.media.probe import PROGRESSIVE_FORMATS, probe_media
from clipqueue.media.process import CHILD_ENVIRONMENT, run_ffmpeg
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


def test_children_see_only_a_minimal_environment(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-ffmpeg")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:password@db/clips")
    seen = dict(line.split("=", 1) for line in run_ffmpeg(["env"]).splitlines() if "=" in line)
    assert "AWS_SECRET_ACCESS_KEY" not in seen and "DATABASE_URL" not in seen
    assert set(seen) <= set(CHILD_ENVIRONMENT)
    assert seen["PATH"] == os.environ["PATH"]  # ffmpeg is still found


def test_a_failed_ffmpeg_names_no_local_path(tmp_path):
    missing = tmp_path / "extract-tmp" / "source.ts"
    with pytest.raises(InvalidMedia) as caught:
        run_ffmpeg(["ffmpeg", "-v", "error", "-i", str(missing), "-f", "null", "-"], what="reading the source")
    assert str(tmp_path) not in str(caught.value) and "extract-tmp" not in str(caught.value)
    assert "No such file" in str(caught.value)  # what went wrong is still said


def test_a_probe_of_a_relay_that_never_answers_gives_up_within_its_timeout():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/source"
        started = time.monotonic()
        with pytest.raises(SourceUnavailable) as caught:
            probe_media(url, PROGRESSIVE_FORMATS, what="the source", timeout=2)
        assert time.monotonic() - started < 10
    assert "127.0.0.1" not in str(caught.value) and "the source" in str(caught.value)
