"""Hostile sources through the real media layer: smuggled playlist entries and stalls fail the job, read nothing local."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from clipqueue.exceptions import ClipqueueError, ForbiddenSource, InvalidMedia, SourceUnavailable
from clipqueue.media.extract import ClipRequest, ExtractOptions, extract_clip
from samplevod.server import serve_directory
from clipqueue.urlpolicy import SourcePolicy

# What must never appear in any output: the first line of /etc/passwd, and a
# file of our own that only a local read could find.
SECRET = b"clipqueue-local-secret-4242"
PASSWD_MARK = b"root:x:0:0"

SEGMENT_PLAYLIST = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:10
#EXT-X-PLAYLIST-TYPE:VOD
{header}#EXTINF:10.000000,
{first}
#EXTINF:10.000000,
1.ts
#EXT-X-ENDLIST
"""


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "secret.ts"
    path.write_bytes(SECRET * 100)
    return path


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory, secret_file, generated_media) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    generated_media.hls_vod(root / "hls", duration=20, segment_seconds=10,
                            variants=(("360p", 640, 360, 800000),))
    return root


@pytest.fixture(scope="module")
def source(hostile_root):
    with serve_directory(hostile_root) as server:
        yield server


def _write_playlist(root: Path, name: str, text: str) -> str:
    (root / "hls" / "360p" / name).write_text(text)
    return f"hls/360p/{name}"


def _assert_nothing_local_in(workdir: Path) -> None:
    for path in workdir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET not in data and PASSWD_MARK not in data, f"local content in {path}"


def _options(**overrides) -> ExtractOptions:
    # Loopback is allowed (the test CDN lives there); everything else in the policy stays on.
    settings = dict(policy=SourcePolicy(allow_private=True), fetch_timeout=2.0, fetch_retries=0,
                    live_poll_interval=0.2, live_wait_deadline=2.0)
    return ExtractOptions(**{**settings, **overrides})


def _smuggled_entries(secret_file: Path, port: int) -> dict[str, tuple[str, str]]:
    """name -> (header lines, first segment line)."""
    local = f"file://{secret_file}"
    return {
        "file-segment": ("", local),
        "passwd-segment": ("", "file:///etc/passwd"),
        "concat-segment": ("", f"concat:http://127.0.0.1:{port}/hls/360p/0.ts|{local}"),
        "subfile-segment": ("", f"subfile,,start,0,end,0,,:{secret_file}"),
        "data-segment": ("", "data:video/mp2t;base64,R0lG"),
        "link-local-segment": ("", "http://169.254.169.254/latest/meta-data/"),
        "map-file": (f'#EXT-X-MAP:URI="{local}"\n', "0.ts"),
        "map-concat": (f'#EXT-X-MAP:URI="concat:0.ts|{local}"\n', "0.ts"),
        "key-file": (f'#EXT-X-KEY:METHOD=AES-128,URI="{local}"\n', "0.ts"),
    }


@pytest.mark.parametrize("case", list(_smuggled_entries(Path("/x"), 0)))
def test_smuggled_segment_map_or_key_fails_the_job_and_reads_nothing_local(source, hostile_root, secret_file,
                                                                          tmp_path, case):
    header, first = _smuggled_entries(secret_file, source.url.rsplit(":", 1)[1])[case]
    path = _write_playlist(hostile_root, f"{case}.m3u8", SEGMENT_PLAYLIST.format(header=header, first=first))
    with pytest.raises(ClipqueueError) as caught:
        extract_clip(ClipRequest(f"{source.url}/{path}", 2, 8, mode="copy"), tmp_path, _options())
    assert isinstance(caught.value, ForbiddenSource), caught.value
    assert "forbidden source" in str(caught.value)
    assert not (tmp_path / "clip.mp4").exists()
    _assert_nothing_local_in(tmp_path)


def test_encrypted_vod_fails_as_invalid_media_instead_of_cutting_ciphertext(source, hostile_root, tmp_path):
    header = '#EXT-X-KEY:METHOD=AES-128,URI="key.bin",IV=0x00000000000000000000000000000001\n'
    path = _write_playlist(hostile_root, "encrypted.m3u8", SEGMENT_PLAYLIST.format(header=header, first="0.ts"))
    with pytest.raises(InvalidMedia, match="encrypted"):
        extract_clip(ClipRequest(f"{source.url}/{path}", 2, 8, mode="copy"), tmp_path, _options())
    assert not (tmp_path / "clip.mp4").exists()


def test_absolute_path_segment_is_fetched_from_the_source_not_the_disk(source, hostile_root, secret_file, tmp_path):
    path = _write_playlist(hostile_root, "bare-path.m3u8", SEGMENT_PLAYLIST.format(header="", first=str(secret_file)))
    with pytest.raises(ClipqueueError):
        extract_clip(ClipRequest(f"{source.url}/{path}", 2, 8, mode="copy"), tmp_path, _options())
    assert source.stats.by_path[str(secret_file)] >= 1
    _assert_nothing_local_in(tmp_path)


@pytest.mark.parametrize("variant", ["file:///etc/passwd", "concat:360p/index.m3u8|file:///etc/passwd",
                                     "http://169.254.169.254/latest/meta-data/"])
def test_smuggled_variant_fails_the_job(source, hostile_root, tmp_path, variant):
    master = (
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\n"
        f"{variant}\n"
    )
    (hostile_root / "hls" / f"master-{abs(hash(variant))}.m3u8").write_text(master)
    with pytest.raises(ForbiddenSource):
        extract_clip(ClipRequest(f"{source.url}/hls/master-{abs(hash(variant))}.m3u8", 2, 8, mode="copy"),
                     tmp_path, _options())
    _assert_nothing_local_in(tmp_path)


def test_progressive_url_that_is_really_a_playlist_cannot_smuggle_local_files(source, hostile_root, secret_file,
                                                                              tmp_path):
    # Named like a progressive file, but it is an HLS playlist pointing at a local file.
    (hostile_root / "trap.mp4").write_text(SEGMENT_PLAYLIST.format(header="", first=f"file://{secret_file}"))
    with pytest.raises(ClipqueueError):
        extract_clip(ClipRequest(f"{source.url}/trap.mp4", 2, 8, mode="copy"), tmp_path, _options())
    _assert_nothing_local_in(tmp_path)


def _ffmpeg_children() -> list[int]:
    """ffmpeg/ffprobe processes whose parent is this test process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and name in ("ffmpeg", "ffprobe"):
            found.append(int(entry.name))
    return found


def test_source_that_stalls_mid_segment_fails_within_the_timeout_and_leaves_no_ffmpeg(source, tmp_path):
    source.behaviour.stall["/hls/360p/1.ts"] = 30.0
    try:
        began = time.monotonic()
        with pytest.raises(SourceUnavailable):
            extract_clip(ClipRequest(f"{source.url}/hls/360p/index.m3u8", 2, 18, mode="copy"), tmp_path,
                         _options(fetch_timeout=1.0))
        assert time.monotonic() - began < 10
    finally:
        source.behaviour.stall.clear()
    assert _ffmpeg_children() == []
    assert not (tmp_path / "extract-tmp").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_progressive_source_cannot_redirect_ffmpeg_after_the_check(tmp_path):
    from samplevod.vod import generate_progressive_mp4
    from tests.security.servers import CountingServer

    mp4 = tmp_path / "source.mp4"
    generate_progressive_mp4(mp4, duration=6)
    # The origin (127.0.0.2) is the one address the policy admits; 127.0.0.1 stands for an internal service.
    policy = SourcePolicy(allowed_networks=("127.0.0.2/32",))
    with CountingServer("127.0.0.1", name="internal") as internal, \
            CountingServer("127.0.0.2", name="origin") as origin:
        origin.payload = mp4.read_bytes()
        url = f"{origin.url}/switch?to=http://127.0.0.1:{internal.port}/admin"
        with pytest.raises(ForbiddenSource):  # the relay's checked fetch refused the hop, and that is what surfaces
            extract_clip(ClipRequest(url, 1, 3, mode="copy"), tmp_path / "work",
                         _options(policy=policy))
        assert internal.connections == 0


def _playlist_posing_as_media(secret_file: Path) -> str:
    # What FFmpeg's hls demuxer would follow if it ever opened this: a local file with an
    # allowed extension (.ts) and /etc/passwd.
    return ("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
            f"file://{secret_file}\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")


@pytest.mark.parametrize("start,end", [(2, 8), (2, 18)])
def test_segment_whose_content_is_a_playlist_fails_as_invalid_media_and_reads_nothing_local(
        source, hostile_root, secret_file, tmp_path, start, end):
    (hostile_root / "hls" / "360p" / "evil.ts").write_text(_playlist_posing_as_media(secret_file))
    path = _write_playlist(hostile_root, "evil-segment.m3u8", SEGMENT_PLAYLIST.format(header="", first="evil.ts"))
    with pytest.raises(InvalidMedia):
        extract_clip(ClipRequest(f"{source.url}/{path}", start, end), tmp_path, _options())
    assert not (tmp_path / "clip.mp4").exists()
    _assert_nothing_local_in(tmp_path)


def test_avi_segment_is_not_demuxed_as_avi(source, hostile_root, tmp_path):
    # AVI is how CVE-2016-1897/1898 and CVE-2017-9993 smuggled a playlist in: never let its demuxer run.
    avi = hostile_root / "hls" / "360p" / "clip.avi.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30:duration=10",
                    "-c:v", "mpeg4", "-f", "avi", str(avi)], check=True)
    path = _write_playlist(hostile_root, "avi-segment.m3u8", SEGMENT_PLAYLIST.format(header="", first=avi.name))
    with pytest.raises(InvalidMedia):
        extract_clip(ClipRequest(f"{source.url}/{path}", 2, 8), tmp_path, _options())


@pytest.mark.parametrize("name", ["avi-source.mp4", "padded-playlist.mp4"])
def test_progressive_source_in_a_format_ffmpeg_may_not_open_fails_as_invalid_media(
        source, hostile_root, secret_file, tmp_path, name):
    trap = hostile_root / name
    if name.startswith("avi"):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc=size=320x240:rate=30:duration=10", "-c:v", "mpeg4", "-f", "avi", str(trap)],
                       check=True)
    else:
        # Not recognised as a playlist by clipqueue (junk first), so it goes down the progressive path.
        trap.write_text("x" * 100 + "\n" + _playlist_posing_as_media(secret_file))
    with pytest.raises(InvalidMedia):
        extract_clip(ClipRequest(f"{source.url}/{name}", 2, 8, mode="copy"), tmp_path, _options())
    assert not (tmp_path / "clip.mp4").exists()
    _assert_nothing_local_in(tmp_path)


def test_source_redirects_are_followed_at_most_max_redirects_times(tmp_path):
    from tests.security.servers import CountingServer

    with CountingServer("127.0.0.1", name="loop") as loop:
        with pytest.raises(ForbiddenSource, match="more than 2 redirects"):
            extract_clip(ClipRequest(f"{loop.url}/loop", 1, 3), tmp_path, _options(max_redirects=2))
        assert len(loop.requests) == 3  # the first request and two redirects
