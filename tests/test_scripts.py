"""scripts/start.sh and the Procfile: the local demo is safe, and its processes say only what matters."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import redis
import requests

from clipqueue.keys import CONTROL_QUEUE
from tests.security.test_flower import _procfile_command
from tests.security.test_flower import _stop as stop_process_group
from tests.services import REPO, free_port, wait_until

VENV_BIN = str(Path(sys.executable).parent)
# What a newcomer's shell has, and nothing the tests or the machine set.
CLEAN_ENV = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}


def local_deployment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Settings of a deployment whose database and storage are in ``tmp_path``."""
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'clipqueue.db'}",
            "STORAGE_LOCAL_DIR": str(tmp_path / "media"), **settings}


def demo_environment(**given: str) -> dict[str, str]:
    """The environment ``scripts/start.sh`` gives its processes (it prints it and starts nothing)."""
    result = subprocess.run([str(REPO / "scripts" / "start.sh"), "--print-env"], env={**CLEAN_ENV, **given},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


@contextmanager
def procfile_process(name: str, env: dict[str, str], log: Path):
    """Run the Procfile's ``name`` line as Procfile runners do (with a shell); stop it afterwards."""
    with open(log, "wb") as output:
        process = subprocess.Popen(["sh", "-c", _procfile_command(name)], env={**CLEAN_ENV, **env}, cwd=REPO,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop_process_group(process)


@contextmanager
def procfile_web(env: dict[str, str], log: Path, port: int, workers: int = 1):
    """The Procfile's ``web`` line on loopback ``port``, once it answers; yields its process."""
    web_env = {**env, "PORT": str(port), "WEB_ADDRESS": "127.0.0.1", "WEB_CONCURRENCY": str(workers)}
    with procfile_process("web", web_env, log) as process:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz") or process.poll() is not None, 60,
                   what="web to answer")
        assert process.poll() is None, log.read_text()
        yield process


def test_start_sh_no_longer_opens_private_sources_and_keeps_web_on_loopback():
    env = demo_environment()
    assert "ALLOW_PRIVATE_SOURCES" not in env
    assert env["WEB_ADDRESS"] == "127.0.0.1"
    assert env["ALLOWED_PRIVATE_NETWORKS"] == f"{env['SAMPLE_VOD_ADDRESS']}/32"
    # An operator's own networks are kept beside the sample server's address.
    assert demo_environment(ALLOWED_PRIVATE_NETWORKS="10.20.0.0/16")["ALLOWED_PRIVATE_NETWORKS"] == (
        f"10.20.0.0/16,{env['SAMPLE_VOD_ADDRESS']}/32")


def test_the_demos_settings_admit_the_sample_server_and_refuse_other_loopback_services(service_factory):
    demo = demo_environment()
    sample_url = f"http://{demo['SAMPLE_VOD_ADDRESS']}:{demo['SAMPLE_VOD_PORT']}/master.m3u8"
    assert sample_url in (REPO / "README.md").read_text(), "README's example must use the sample server"
    # The service's own Redis and database stay the fixture's; the source policy is the demo's.
    service = service_factory(ALLOW_PRIVATE_SOURCES=demo.get("ALLOW_PRIVATE_SOURCES", "false"),
                              ALLOWED_PRIVATE_NETWORKS=demo["ALLOWED_PRIVATE_NETWORKS"])
    body = {"start_time": 12.5, "end_time": 42.5, "quality": "720p"}

    admitted = service.create_clip(vod_url=sample_url, **body)
    assert admitted.status_code == 201, admitted.get_json()

    for url in (f"http://127.0.0.1:{demo['SAMPLE_VOD_PORT']}/master.m3u8",  # same port, another address
                f"http://127.0.0.1:{demo['PORT']}/api/v1/queue",  # web itself
                f"http://127.0.0.1:{free_port()}/master.m3u8",
                "http://localhost:6379/",
                f"http://127.0.0.90:{demo['SAMPLE_VOD_PORT']}/master.m3u8"):
        refused = service.create_clip(vod_url=url, **body)
        assert refused.status_code == 400, (url, refused.get_json())
        assert refused.get_json()["error"]["code"] == "forbidden_source", url


def test_the_sample_servers_address_can_be_bound_on_this_machine():
    with socket.socket() as sock:
        sock.bind((demo_environment()["SAMPLE_VOD_ADDRESS"], 0))


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening, or still starting
        return False


def _process_tree(root: int) -> dict[int, tuple[str, str]]:
    """``root`` and its descendants: pid → (start time, command line), to tell a reused pid apart."""
    parents, info = {}, {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(proc.name)] = int(fields[1])
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                info[int(proc.name)] = (fields[19], command)
        except (OSError, IndexError):  # gone meanwhile
            continue
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in info and pid not in tree:
            tree[pid] = info[pid]
            todo += [child for child, parent in parents.items() if parent == pid]
    return tree


def _still_running(processes: dict[int, tuple[str, str]]) -> list[str]:
    running = []
    for pid, (started, command) in processes.items():
        try:
            if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19] == started:
                running.append(f"{pid} {command}")
        except (OSError, IndexError):
            continue
    return running


def _redis_answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def test_ctrl_c_stops_every_process_start_sh_started_and_its_redis(tmp_path):
    port, redis_port = free_port(), free_port()
    env = {**CLEAN_ENV, **local_deployment(
        tmp_path, RUN_DIR=str(tmp_path / "run"), PORT=str(port), REDIS_PORT=str(redis_port),
        FLOWER_PORT=str(free_port()), SAMPLE_VOD="0", WEB_CONCURRENCY="1", WORKER_CONCURRENCY="1",
        # Its pip install would replace clipqueue's entry points in .venv while tests in other xdist
        # workers start processes from there.
        SKIP_INSTALL="1")}
    log = tmp_path / "start.log"
    with open(log, "wb") as output:
        # Its own process group, as a terminal gives the command it runs.
        script = subprocess.Popen([str(REPO / "scripts" / "start.sh")], env=env, cwd=REPO, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    started: dict[int, tuple[str, str]] = {}
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz") or script.poll() is not None, 240,
                   interval=1, what="scripts/start.sh to serve")
        assert script.poll() is None, log.read_text(errors="replace")[-3000:]
        assert _redis_answers(redis_port)
        time.sleep(3)  # beat and flower start after web
        started = _process_tree(script.pid)
        assert len(started) > 5, started

        os.killpg(script.pid, signal.SIGINT)  # Ctrl-C
        script.wait(60)
        wait_until(lambda: not _still_running(started), 15, what="its processes to end")
        assert not _redis_answers(redis_port), "the Redis it started still runs"
    finally:
        if script.poll() is None:
            started = started or _process_tree(script.pid)
            script.terminate()  # its trap stops what it started
            try:
                script.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(script.pid, signal.SIGKILL)
        for pid in started:
            if _still_running({pid: started[pid]}):
                os.kill(pid, signal.SIGKILL)
        if _redis_answers(redis_port):
            redis.Redis(port=redis_port).shutdown(nosave=True)


def test_web_started_from_the_procfile_with_the_demos_settings_listens_on_loopback_only(redis_url, tmp_path):
    port = free_port()
    env = {**demo_environment(), **local_deployment(tmp_path, PORT=str(port), WEB_CONCURRENCY="1",
                                                    REDIS_URL=redis_url)}
    with procfile_process("web", env, tmp_path / "web.log") as web:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz") or web.poll() is not None, 60,
                   what="web to answer")
        assert web.poll() is None, (tmp_path / "web.log").read_text()
        # Bound to 0.0.0.0 it would answer on every address of the machine, 127.0.0.2 included.
        assert not _answers(f"http://127.0.0.2:{port}/healthz")


def test_beat_from_the_procfile_sends_its_periodic_tasks_without_logging_each_one(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    env = local_deployment(tmp_path, REDIS_URL=redis_url, BEAT_SCHEDULE_FILE=str(tmp_path / "beat-schedule"),
                           JANITOR_INTERVAL_SECONDS="0.5", OUTBOX_SWEEP_SECONDS="0.5")
    log = tmp_path / "beat.log"
    with procfile_process("beat", env, log) as beat:
        # The tasks it sent wait in the control queue (no worker here): real state, not its log.
        wait_until(lambda: client.llen(CONTROL_QUEUE) >= 4 or beat.poll() is not None, 60,
                   what="beat to send its periodic tasks")
        assert beat.poll() is None, log.read_text()
        time.sleep(0.5)
    output = log.read_text(errors="replace")
    assert "Sending due task" not in output, output[-2000:]


def _tasks_run(app) -> Counter:
    """How many times the running workers ran each task, by their own count."""
    totals = Counter()
    for stats in (app.control.inspect(timeout=2).stats() or {}).values():
        totals.update(stats.get("total", {}))
    return totals


def test_the_worker_leaves_routine_periodic_runs_out_of_its_info_log(redis_url, tmp_path):
    from celery import Celery

    from clipqueue.queue import JANITOR_TASK, SWEEP_OUTBOX_TASK

    env = local_deployment(tmp_path, REDIS_URL=redis_url, BEAT_SCHEDULE_FILE=str(tmp_path / "beat-schedule"),
                           JANITOR_INTERVAL_SECONDS="0.5", OUTBOX_SWEEP_SECONDS="0.5", WORKER_CONCURRENCY="1")
    migrated = subprocess.run([sys.executable, "-m", "clipqueue", "db", "upgrade"], env={**CLEAN_ENV, **env},
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    log = tmp_path / "worker.log"
    control = Celery(broker=redis_url)
    with procfile_process("worker", env, log) as worker, procfile_process("beat", env, tmp_path / "beat.log"):
        # The worker's own count of the tasks it ran: real state, not its log.
        def ran_each_three_times() -> bool:
            totals = _tasks_run(control)
            return totals.get(JANITOR_TASK, 0) >= 3 and totals.get(SWEEP_OUTBOX_TASK, 0) >= 3

        wait_until(lambda: worker.poll() is not None or ran_each_three_times(), 90, interval=0.5,
                   what="the worker to run periodic tasks")
        assert worker.poll() is None, log.read_text()
    output = log.read_text(errors="replace")
    assert " ready." in output  # the worker's own INFO lines are still there
    assert JANITOR_TASK + "[" not in output, output[-3000:]
    assert SWEEP_OUTBOX_TASK + "[" not in output, output[-3000:]


def test_the_chatter_filter_keeps_other_tasks_and_every_warning():
    import logging

    from celery.app import trace

    from clipqueue import create_app
    from clipqueue.logs import PeriodicTaskChatterFilter, quiet_periodic_task_logs
    from clipqueue.queue import JANITOR_TASK, PROCESS_TASK

    app = create_app({"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "sqlite:///:memory:"})
    quiet_periodic_task_logs(app.extensions["celery"])
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger = logging.getLogger("celery.app.trace")
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    try:
        for name in (JANITOR_TASK, PROCESS_TASK):
            trace.info(trace.LOG_SUCCESS, {"id": "x", "name": name, "return_value": None, "runtime": 0.1})
        failure = {"id": "y", "name": JANITOR_TASK, "exc": "boom", "description": "raised"}
        logger.error(trace.LOG_FAILURE, failure, extra={"data": failure})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        for name in ("celery.app.trace", "celery.worker.strategy"):
            quieted = logging.getLogger(name)
            for installed in [f for f in quieted.filters if isinstance(f, PeriodicTaskChatterFilter)]:
                quieted.removeFilter(installed)
    assert [(record.levelno, record.data["name"]) for record in seen] == [
        (logging.INFO, PROCESS_TASK), (logging.ERROR, JANITOR_TASK)]
