"""Run FFmpeg and ffprobe as child processes that never outlive the worker and see none of its secrets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

from clipqueue.exceptions import InvalidMedia

FFMPEG_TIMEOUT_SECONDS = 300
# All a child sees of the worker's environment: no AWS keys, DATABASE_URL or tokens.
CHILD_ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "TMPDIR")

_SETPRIV = shutil.which("setpriv")
# What is left of a local path or a relay's loopback URL in FFmpeg's log once the arguments are replaced.
_RELAY_URL = re.compile(r"https?://(?:127\.\d+\.\d+\.\d+|localhost|\[::1\])(?::\d+)?(?:/[^\s'\":]*)?")
_LOCAL_PATH = re.compile(r"(?:file:)?(?<![\w.~-])/[\w.@+~/-]*[\w@+~-]")

# The FFmpeg and ffprobe children running now, so that a canceled job can stop them at once.
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


def dies_with_parent(args: list[str]) -> list[str]:
    """``args`` wrapped so the kernel kills ffmpeg when the process that started it dies.

    A hard time limit or a crash SIGKILLs the worker's pool process, which
    runs no cleanup; without this its ffmpeg would run on as an orphan.
    """
    if _SETPRIV is None:
        return args
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *args]


def child_environment() -> dict[str, str]:
    """The environment of every FFmpeg or ffprobe: :data:`CHILD_ENVIRONMENT` from the worker's, nothing else."""
    return {name: os.environ[name] for name in CHILD_ENVIRONMENT if name in os.environ}


def without_locations(log: str, args: list[str]) -> str:
    """``log`` with the files and URLs FFmpeg was given, and any other local path, replaced by neutral words.

    Error texts reach users: they must not show a worker's folders or a relay's loopback address.
    """
    for arg in sorted((a for a in args if "/" in a), key=len, reverse=True):
        log = log.replace(arg, "the source" if arg.startswith(("http:", "https:")) else "a file")
    return _LOCAL_PATH.sub("a file", _RELAY_URL.sub("the source", log))


def run_ffmpeg(args: list[str], timeout: float = FFMPEG_TIMEOUT_SECONDS, what: str = "ffmpeg") -> str:
    """Run an ffmpeg/ffprobe command, killing it on timeout; return stdout, raise ``InvalidMedia`` on failure."""
    return run_ffmpeg_logged(args, timeout, what)[0]


def run_ffmpeg_logged(args: list[str], timeout: float = FFMPEG_TIMEOUT_SECONDS, what: str = "ffmpeg") -> tuple[str, str]:
    """:func:`run_ffmpeg`, returning stdout and the log (stderr)."""
    with subprocess.Popen(dies_with_parent(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=child_environment()) as proc:
        with _running_lock:
            _running.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with _running_lock:
                _running.discard(proc)
    log = err.decode(errors="replace")
    if proc.returncode != 0:
        raise InvalidMedia(f"{what} failed ({proc.returncode}): {without_locations(log.strip()[-1500:], args)}")
    return out.decode(errors="replace"), log


def kill_running() -> int:
    """Kill every FFmpeg and ffprobe this process runs now (a job was canceled); return how many.

    A worker process runs one job at a time, so its children are that job's.
    Their callers see them fail and stop.
    """
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        try:
            proc.kill()
        except OSError:
            pass
    return len(procs)
