"""Run FFmpeg and ffprobe as child processes that never outlive the worker."""

from __future__ import annotations

import shutil
import subprocess

from clipqueue.exceptions import InvalidMedia

FFMPEG_TIMEOUT_SECONDS = 300

_SETPRIV = shutil.which("setpriv")


def dies_with_parent(args: list[str]) -> list[str]:
    """``args`` wrapped so the kernel kills ffmpeg when the process that started it dies.

    A hard time limit or a crash SIGKILLs the worker's pool process, which
    runs no cleanup; without this its ffmpeg would run on as an orphan.
    """
    if _SETPRIV is None:
        return args
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *args]


def run_ffmpeg(args: list[str], timeout: float = FFMPEG_TIMEOUT_SECONDS, what: str = "ffmpeg") -> str:
    """Run an ffmpeg/ffprobe command, killing it on timeout; return stdout, raise ``InvalidMedia`` on failure."""
    return run_ffmpeg_logged(args, timeout, what)[0]


def run_ffmpeg_logged(args: list[str], timeout: float = FFMPEG_TIMEOUT_SECONDS, what: str = "ffmpeg") -> tuple[str, str]:
    """:func:`run_ffmpeg`, returning stdout and the log (stderr)."""
    with subprocess.Popen(dies_with_parent(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    log = err.decode(errors="replace")
    if proc.returncode != 0:
        raise InvalidMedia(f"{what} failed ({proc.returncode}): {log.strip()[-1500:]}")
    return out.decode(errors="replace"), log
