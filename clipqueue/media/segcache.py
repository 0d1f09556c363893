"""A host's cache of source segments, shared by its worker processes.

When something happens on stream, hundreds of viewers clip the same moment
within seconds, and every job needs the same few segments. Through this
cache each segment (or init section, or byte range of either) crosses the
network once per host: the first job that needs it fetches it while holding
the key's file lock, the others wait for that lock and then read the file.

Layout under the cache's folder:

- ``data/<aa>/<key>``: one whole body. Its mtime is when it was written (it
  expires ``ttl_seconds`` later), its atime when it was last used (eviction
  takes the least recently used first).
- ``tmp/``: bodies on their way in, renamed into ``data/`` once whole and of
  the size the server declared, so nobody ever reads a partial file.
- ``locks/<aa>/<key>.lock``: ``flock`` locks, one per key. A lock is only a
  way to avoid fetching twice; correctness never depends on it (a body is
  published by an atomic rename), so a lock file removed by the sweep while
  held costs at most one more fetch.

Readers take a hard link of a body into their own scratch folder (a copy
when the folders are on different file systems): eviction unlinks the
cache's name only, never a file a job reads. Those links share the cache's
inode, so they are read and unlinked, never written.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_POLL_SECONDS = 0.02
STALE_TMP_SECONDS = 600.0  # a body still in tmp/ after this long was left by a killed process
CACHE_FOLDER = "clipqueue-segment-cache"


def cache_key(url: str, byterange: tuple[int, int] | None = None) -> str:
    """The cache key of ``url`` (the full URL, query included) or of ``byterange`` (offset, length) of it.

    The query stays: Twitch's CDN URLs are stable for a VOD, and a signed
    URL's query may name a different rendition or VOD.
    """
    what = f"{url}\n{'whole' if byterange is None else f'{byterange[0]}+{byterange[1]}'}"
    return hashlib.sha256(what.encode()).hexdigest()


@dataclass
class CacheStats:
    """What one job's fetches got from the cache."""

    hits: int = 0  # found in the cache
    coalesced: int = 0  # found after waiting for another fetch of the same key to finish
    misses: int = 0  # fetched from the source
    bytes_saved: int = 0  # bytes of hits and coalesced reads, not fetched


class Claim:
    """The right to fetch one key (its lock held); :meth:`release` it once the body is published or failed."""

    def __init__(self, fd: int):
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # closing the file releases its flock
                self._fd = None


class SegmentCache:
    """Whole segment bodies on local disk, at most ``max_bytes`` of them, each kept ``ttl_seconds``."""

    def __init__(self, root: Path | str, max_bytes: int, ttl_seconds: float):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self._data = self.root / "data"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        for folder in (self._data, self._tmp, self._locks):
            folder.mkdir(parents=True, exist_ok=True)

    def _body(self, key: str) -> Path:
        return self._data / key[:2] / key

    # --- reading ---------------------------------------------------------------

    def take(self, key: str, dest: Path) -> int | None:
        """Put the cached body of ``key`` at ``dest`` (a hard link, else a copy); its size, None if absent.

        An expired body counts as absent.
        """
        body = self._body(key)
        try:
            stat = body.stat()
        except FileNotFoundError:
            return None
        now = time.time()
        if now - stat.st_mtime > self.ttl_seconds:
            return None
        dest.unlink(missing_ok=True)
        try:
            os.link(body, dest)
        except FileNotFoundError:
            return None  # evicted since the stat
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            try:
                shutil.copyfile(body, dest)
            except FileNotFoundError:
                return None
        if dest.stat().st_size != stat.st_size:  # replaced meanwhile by a body of another size: read it anew
            dest.unlink(missing_ok=True)
            return None
        try:
            os.utime(body, (now, stat.st_mtime))  # used now; written when it was
        except FileNotFoundError:
            pass
        return stat.st_size

    # --- single flight ---------------------------------------------------------

    def _open_lock(self, key: str) -> int:
        path = self._locks / key[:2] / f"{key}.lock"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def claim(self, key: str) -> Claim | None:
        """Take the right to fetch ``key`` if nobody on this host is fetching it; None if somebody is."""
        fd = self._open_lock(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.utime(fd)  # the sweep removes lock files nobody used for long
        return Claim(fd)

    def wait_claim(self, key: str, timeout: float, stop: Callable[[], bool] = lambda: False) -> Claim | None:
        """Wait until whoever fetches ``key`` is done (or died), then hold its lock.

        Returns None after ``timeout`` seconds or once ``stop()`` is true; the
        caller then fetches without the lock.
        """
        deadline = time.monotonic() + timeout
        while not stop():
            claim = self.claim(key)
            if claim is not None or time.monotonic() >= deadline:
                return claim
            time.sleep(LOCK_POLL_SECONDS)
        return None

    # --- writing ---------------------------------------------------------------

    def publish(self, key: str, path: Path, size: int) -> bool:
        """Keep the whole body at ``path`` under ``key`` if it is ``size`` bytes; False if it is not kept.

        ``path`` is linked (or copied) beside the cache first and renamed into
        place, so readers see the old body or the new one, never a part.
        """
        if size > self.max_bytes:
            return False
        try:
            if path.stat().st_size != size:
                log.warning("segment of %d bytes where %d were declared: not cached",
                            path.stat().st_size, size)
                return False
            staged = self._tmp / f"{key[:16]}-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
            try:
                os.link(path, staged)
            except OSError:
                shutil.copyfile(path, staged)
            try:
                if staged.stat().st_size != size:
                    return False
                body = self._body(key)
                body.parent.mkdir(exist_ok=True)
                os.replace(staged, body)
            finally:
                staged.unlink(missing_ok=True)
        except OSError as exc:  # a full or read-only disk costs the cache, never the job
            log.warning("segment not cached: %s", exc)
            return False
        self.sweep()
        return True

    def sweep(self) -> None:
        """Drop expired bodies, then the least recently used until the cache fits ``max_bytes``.

        One process sweeps at a time; a sweep already running makes this a no-op.
        """
        with open(self.root / "sweep.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            now = time.time()
            kept: list[tuple[float, int, Path]] = []
            for path, stat in _files(self._data):
                if now - stat.st_mtime > self.ttl_seconds:
                    path.unlink(missing_ok=True)
                else:
                    kept.append((stat.st_atime, stat.st_size, path))
            total = sum(size for _, size, _ in kept)
            for _, size, path in sorted(kept, key=lambda entry: entry[0]):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
            for path, stat in _files(self._tmp):
                if now - stat.st_mtime > STALE_TMP_SECONDS:
                    path.unlink(missing_ok=True)
            for path, stat in _files(self._locks):
                if now - stat.st_mtime > max(self.ttl_seconds, STALE_TMP_SECONDS):
                    path.unlink(missing_ok=True)

    def size(self) -> int:
        """Bytes the cache holds now."""
        return sum(stat.st_size for _, stat in _files(self._data))


def _files(folder: Path):
    """(path, stat) of every file under ``folder`` (two levels at most), skipping those removed meanwhile."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                try:
                    with os.scandir(entry.path) as inner:
                        items = list(inner)
                except FileNotFoundError:
                    continue
            else:
                items = [entry]
            for item in items:
                try:
                    if item.is_file(follow_symlinks=False):
                        yield Path(item.path), item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
