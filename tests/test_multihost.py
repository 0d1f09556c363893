"""README's several-hosts layout, for real: a worker host lost mid-storm costs no clip and does none twice.

Six network namespaces on a bridge (tests/netns.py): ``core`` (Redis, a
private PostgreSQL cluster, moto's S3 server), ``cdn`` (the sample VOD),
``api`` (the Procfile's ``release``, then ``web`` and ``beat``) and two
worker hosts, ``worker-a`` and ``worker-b`` (the Procfile's ``worker``, each
with its own scratch folder and hostname). Every process is configured by
environment alone and reaches the others only by address. The test is a
client on the same network: it creates the clips through the API, then cuts
worker-a's cable while it runs jobs, and kills what runs there.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import psycopg2
import pytest
import redis
import requests

from clipqueue.keys import worker_alive_key
from tests.conftest import AWS_ENV
from tests.mediacheck import assert_playable_mp4, clip_object_keys, fetch_stored
from tests.netns import (
    PREFIX, Host, NamespacesUnavailable, Network, delete_namespace, ip, namespace_pids, remove_leftovers,
)
from tests.security.test_flower import _procfile_command
from tests.services import REPO, wait_until
from tests.test_reliability import FAST_RECOVERY, uploads

# Six hosts' worth of processes start on a machine of 2 cores: more than the suite's 300 s when it is loaded.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

VENV_BIN = str(Path(sys.executable).parent)
STORM = 12
BUCKET = "clips"
EARLY_STAGES = ("fetching", "cutting")  # a job there has work left: cut off, it cannot finish
REDIS_PORT, POSTGRES_PORT, S3_PORT, VOD_PORT, WEB_PORT = 6379, 5432, 5000, 8089, 8000
# A lost worker is noticed within seconds, not the defaults' minutes (FAST_RECOVERY), and retries wait little.
QUICK = {**FAST_RECOVERY, "JOB_RETRY_BACKOFF_SECONDS": "1", "JOB_RETRY_BACKOFF_MAX_SECONDS": "2",
         "OUTBOX_SWEEP_SECONDS": "1"}


def without_namespaces(exc: NamespacesUnavailable) -> None:
    """Skip, with the reason, where namespaces cannot be made; under CI, where they can, fail."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to make network namespaces: {exc}")
    pytest.skip(f"network namespaces cannot be made here: {exc}")


@pytest.fixture
def network():
    """The test's own network, removed afterwards whatever happened."""
    net = Network()
    try:
        net.create()
    except NamespacesUnavailable as exc:
        without_namespaces(exc)
    yield net
    net.remove()


@pytest.fixture
def postgres_bin() -> Path:
    """The folder of PostgreSQL's server binaries (initdb, postgres)."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        if os.environ.get("CI"):
            pytest.fail("initdb is missing, which scripts/install.sh test installs")
        pytest.skip("PostgreSQL's server binaries (initdb) are not installed")
    return Path(initdb[-1]).parent


@dataclass
class Deployment:
    """The running hosts, seen from the test: a client on the same network."""

    hosts: dict[str, Host]
    env: dict[str, str]  # what every host was given
    logs: Path
    began: float = field(default_factory=time.monotonic)

    @property
    def api(self) -> str:
        return f"http://{self.hosts['api'].address}:{WEB_PORT}"

    def get(self, path: str) -> dict:
        response = requests.get(f"{self.api}{path}", timeout=10)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def wait(self, predicate, timeout: float, what: str, interval: float = 0.3):
        """``wait_until``, with the end of every host's logs when it times out."""
        try:
            return wait_until(predicate, timeout, interval, what)
        except AssertionError as exc:
            tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
                              for log in sorted(self.logs.glob("*.log")))
            raise AssertionError(f"{exc}\n{tails}") from None


def answers(check) -> bool:
    try:
        check()
    except (OSError, redis.RedisError, psycopg2.Error, requests.RequestException):
        return False
    return True


def serves(url: str) -> bool:
    return answers(lambda: requests.get(url, timeout=2).raise_for_status())


def run_procfile(host: Host, name: str, env: dict[str, str], logs: Path, **own: str):
    """Run the Procfile's ``name`` line on ``host`` as Procfile runners do (with a shell), with the host's
    own settings and home folder on top of what every host is given."""
    home = logs.parent / host.name
    home.mkdir(exist_ok=True)
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), **env, **own}
    return host.start(["sh", "-c", f"cd {REPO} && {_procfile_command(name)}"], env,
                      logs / f"{host.name}-{name}.log")


def start_stores(core: Host, cdn: Host, bindir: Path, cluster: Path, vod_dir: Path, logs: Path) -> None:
    """Redis, PostgreSQL (a cluster made in ``cluster``) and an S3 API on ``core``, the VOD on ``cdn``."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(logs), **AWS_ENV}
    core.start(["redis-server", "--bind", core.address, "--port", str(REDIS_PORT), "--protected-mode", "no",
                "--save", "", "--appendonly", "no", "--dir", str(logs)], env, logs / "core-redis.log")
    core.start([sys.executable, "-m", "moto.server", "-H", core.address, "-p", str(S3_PORT)], env,
               logs / "core-s3.log")
    # initdb, then the server in the foreground: trust for the network's hosts, no fsync (a test's data).
    data = cluster / "data"
    script = (f'"{bindir}/initdb" -D "{data}" -A trust -U postgres --no-sync -E UTF8 >/dev/null && '
              f'echo "host all all {core.network.subnet} trust" >> "{data}/pg_hba.conf" && '
              f'exec "{bindir}/postgres" -D "{data}" -c listen_addresses={core.address} '
              f'-c port={POSTGRES_PORT} -c unix_socket_directories="{cluster}" -c max_connections=200 '
              f'-c fsync=off -c synchronous_commit=off -c full_page_writes=off')
    core.start(["sh", "-c", script], env, logs / "core-postgres.log", user="postgres")
    cdn.start([sys.executable, "-m", "samplevod", "serve", str(vod_dir), "--host", cdn.address,
               "--port", str(VOD_PORT)], env, logs / "cdn-vod.log")


@pytest.fixture
def deployment(network, postgres_bin, vod_dir, tmp_path) -> Deployment:
    """Every host of README's layout, started in the order a deploy would, each process answering."""
    cluster = network.folder("postgres")  # the postgres user's: pytest's folders are root's alone
    shutil.chown(cluster, "postgres", "postgres")
    try:
        yield start_deployment(network, postgres_bin, cluster, vod_dir, tmp_path)
    finally:
        network.remove()  # before the cluster's folder goes: nothing may write to it any more
        shutil.rmtree(cluster, ignore_errors=True)


def start_deployment(network: Network, postgres_bin: Path, cluster: Path, vod_dir: Path,
                     tmp_path: Path) -> Deployment:
    logs = tmp_path / "logs"
    logs.mkdir()
    hosts = {name: network.add_host(name) for name in ("core", "cdn", "api", "worker-a", "worker-b")}
    core, api = hosts["core"], hosts["api"]
    # What every host is told: where the shared stores are, and nothing else.
    env = {
        **AWS_ENV,
        **QUICK,
        "REDIS_URL": f"redis://{core.address}:{REDIS_PORT}/0",
        "DATABASE_URL": f"postgresql://postgres@{core.address}:{POSTGRES_PORT}/postgres",
        "S3_BUCKET": BUCKET,
        "S3_ENDPOINT_URL": f"http://{core.address}:{S3_PORT}",
        "PUBLIC_BASE_URL": f"http://{api.address}:{WEB_PORT}",
        # The one private address sources may come from: the VOD host, not Redis, the database or the API.
        "ALLOWED_PRIVATE_NETWORKS": f"{hosts['cdn'].address}/32",
        # One client polls every clip of the storm, from one address.
        "RATE_LIMIT_READS": "0",
    }
    deployment = Deployment(hosts, env, logs)
    start_stores(core, hosts["cdn"], postgres_bin, cluster, vod_dir, logs)

    store = redis.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=1)
    deployment.wait(lambda: answers(store.ping), 30, "Redis on the core host")
    # Workers need only Redis to start: they boot while the database and web come up.
    for name in ("worker-a", "worker-b"):
        scratch = tmp_path / name / "scratch"  # the host's own disk
        scratch.mkdir(parents=True)
        run_procfile(hosts[name], "worker", env, logs, WORKER_CONCURRENCY="2", SCRATCH_DIR=str(scratch),
                     WORKER_HEARTBEAT_DIR=str(tmp_path / name / "heartbeats"))

    database = {"host": core.address, "port": POSTGRES_PORT, "user": "postgres", "dbname": "postgres"}
    deployment.wait(lambda: answers(lambda: psycopg2.connect(**database, connect_timeout=2).close()), 90,
                    "PostgreSQL on the core host")
    release = run_procfile(api, "release", env, logs)
    assert release.wait(120) == 0, (logs / "api-release.log").read_text()
    run_procfile(api, "web", env, logs, WEB_ADDRESS=api.address, PORT=str(WEB_PORT), WEB_CONCURRENCY="1")
    run_procfile(api, "beat", env, logs, BEAT_SCHEDULE_FILE=str(tmp_path / "api" / "beat-schedule"))

    deployment.wait(lambda: answers(lambda: requests.get(f"{env['S3_ENDPOINT_URL']}/", timeout=2)), 60,
                    "the S3 API on the core host")
    s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"])
    s3.create_bucket(Bucket=BUCKET)
    # Every upload kept, so the test can count how often each clip was stored.
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    deployment.wait(lambda: serves(f"http://{hosts['cdn'].address}:{VOD_PORT}/hls/master.m3u8"), 60,
                    "the VOD server")
    deployment.wait(lambda: serves(f"{deployment.api}/readyz"), 90, "web on the api host")
    nodes = [f"{kind}@{name}" for name in ("worker-a", "worker-b") for kind in ("jobs", "control")]
    deployment.wait(lambda: all(store.exists(worker_alive_key(node)) for node in nodes), 120,
                    f"workers {', '.join(nodes)} to beat")
    return deployment


def test_worker_host_lost_mid_storm_every_clip_ready_once(deployment, tmp_path):
    up_at = time.monotonic()
    vod_url = f"http://{deployment.hosts['cdn'].address}:{VOD_PORT}/hls/master.m3u8"
    modes, qualities = ("accurate", "copy"), ("360p", "160p", "auto")
    bodies = {}
    for i in range(STORM):
        start = round((i * 3.7) % 50 + 0.4, 1)  # overlapping ranges over the whole VOD
        body = {"vod_url": vod_url, "start_time": start, "end_time": start + 3 + i % 3,
                "mode": modes[i % 2], "quality": qualities[i % 3], "title": f"storm {i}"}
        response = requests.post(f"{deployment.api}/api/v1/clips", json=body, timeout=10)
        assert response.status_code == 201, response.text
        bodies[response.json()["clip_id"]] = body

    def working_on() -> dict[str, list[str]]:
        """The clips each worker host is fetching or cutting now: jobs that need it for a while yet."""
        working: dict[str, list[str]] = {"worker-a": [], "worker-b": []}
        for clip_id in bodies:
            job = deployment.get(f"/api/v1/clips/{clip_id}/job")
            host = (job.get("worker") or "").partition("@")[2]
            if host in working and job.get("status") == "running" and job.get("stage") in EARLY_STAGES:
                working[host].append(clip_id)
        return working

    busy = deployment.wait(lambda: (w := working_on()) and all(w.values()) and w, 60,
                           "jobs running on both worker hosts", interval=0.2)
    victim, survivor = deployment.hosts["worker-a"], deployment.hosts["worker-b"]
    lost = busy[victim.name]
    cut_at = time.monotonic()
    victim.cut()
    # Cut off but still running: its jobs cannot store or finish, and the janitor gives them to the survivor.
    # Seconds, a few more if the cut host was running the janitor then: its lock lapses one interval later.
    deployment.wait(lambda: all(deployment.get(f"/api/v1/clips/{c}/job").get("redeliveries") for c in lost),
                    120, "the janitor to queue the cut host's jobs again")
    requeued_at = time.monotonic()
    victim.kill()

    clips: dict[str, dict] = {}
    finished_at: dict[str, float] = {}

    def all_finished() -> bool:
        for clip_id in bodies.keys() - clips.keys():
            clip = deployment.get(f"/api/v1/clips/{clip_id}")
            if clip["status"] != "processing":
                clips[clip_id], finished_at[clip_id] = clip, time.monotonic()
        return len(clips) == STORM

    deployment.wait(all_finished, 180, "every clip of the storm to finish")
    print(f"\nmultihost: {STORM} clips, {len(lost)} running on the cut host; hosts up in "
          f"{up_at - deployment.began:.1f} s; those re-queued {requeued_at - cut_at:.1f} s after the cut and "
          f"ready {max(finished_at[c] for c in lost) - cut_at:.1f} s after it; storm done "
          f"{max(finished_at.values()) - up_at:.1f} s after the first POST; "
          f"test {time.monotonic() - deployment.began:.1f} s")

    assert {c: clip["status"] for c, clip in clips.items() if clip["status"] != "ready"} == {}
    assert deployment.get("/api/v1/queue")["dead_letter"] == 0
    # The cut host's jobs were done again on the survivor, and every clip was stored exactly once.
    for clip_id in lost:
        job = deployment.get(f"/api/v1/clips/{clip_id}/job")
        assert job["status"] == "completed" and job["redeliveries"] >= 1, job
        assert job["worker"] == f"jobs@{survivor.name}", job
    assert {clip_id: uploads(deployment, clip_id) for clip_id in bodies} == dict.fromkeys(bodies, 1)
    s3 = boto3.client("s3", endpoint_url=deployment.env["S3_ENDPOINT_URL"])
    listing = s3.list_objects_v2(Bucket=BUCKET)
    # A video, thumbnails and a preview each, nothing else.
    assert {item["Key"] for item in listing.get("Contents", [])} == set().union(
        *(clip_object_keys(clips[clip_id]) for clip_id in bodies))

    for clip_id, body in bodies.items():
        video = fetch_stored(deployment, clips[clip_id]["video_url"], tmp_path / f"{clip_id}.mp4")
        # Copy mode starts at the keyframe before start_time (one every 2 s in the test VOD).
        tolerance = 0.2 if body["mode"] == "accurate" else 2.1
        assert_playable_mp4(video, body["end_time"] - body["start_time"], tolerance)


def test_what_a_crashed_run_left_is_removed_by_the_next():
    ended = subprocess.Popen(["true"])
    ended.wait()
    crashed = f"{PREFIX}{ended.pid}"  # names a run whose process is gone
    namespace = f"{crashed}-core"
    try:
        ip("netns", "add", namespace)
    except NamespacesUnavailable as exc:
        without_namespaces(exc)
    folder = Path(tempfile.gettempdir()) / f"{crashed}-postgres-x"
    folder.mkdir()
    survivor = subprocess.Popen(["ip", "netns", "exec", namespace, "sleep", "60"])
    try:
        wait_until(lambda: namespace_pids(namespace), 10, what="a process in the leftover namespace")
        remove_leftovers()
        assert survivor.wait(10) == -signal.SIGKILL
        assert namespace not in ip("netns", "list").split()
        assert not folder.exists()
    finally:
        survivor.kill()
        delete_namespace(namespace)
        shutil.rmtree(folder, ignore_errors=True)
