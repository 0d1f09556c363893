"""Flower, as the Procfile starts it, never serves without credentials."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.services import REPO, free_port, wait_until

START_TIMEOUT = 60.0


def _procfile_command(name: str) -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        process, _, command = line.partition(":")
        if process.strip() == name:
            return command.strip()
    raise AssertionError(f"no {name} process in the Procfile")


def _start_flower(env: dict[str, str], log: Path) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    # Procfile runners (honcho, Heroku) run each line with a shell.
    with open(log, "wb") as output:
        return subprocess.Popen(
            ["sh", "-c", _procfile_command("flower")], env={**clean, **env}, cwd=REPO,
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.mark.parametrize("env", [{}, {"FLOWER_BASIC_AUTH": ""}, {"FLOWER_AUTH_PROVIDER": "flower.views.auth.GoogleAuth2LoginHandler"}])
def test_flower_refuses_to_start_without_credentials(redis_url, env, tmp_path):
    port = free_port()
    log = tmp_path / "flower.log"
    process = _start_flower({"REDIS_URL": redis_url, "FLOWER_PORT": str(port), "FLOWER_ADDRESS": "127.0.0.1", **env}, log)
    try:
        process.wait(30)
    finally:
        _stop(process)
    assert process.returncode == 1
    assert b"FLOWER_BASIC_AUTH" in log.read_bytes()


def test_flower_with_credentials_answers_401_without_them(redis_url, tmp_path):
    port = free_port()
    log = tmp_path / "flower.log"
    process = _start_flower({
        "REDIS_URL": redis_url, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": "ops:correct-horse",
    }, log)
    url = f"http://127.0.0.1:{port}/"

    def answers():
        if process.poll() is not None:
            raise AssertionError(f"flower exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            return [requests.get(url, timeout=1)]  # in a list: a 401 response is falsy
        except requests.ConnectionError:
            time.sleep(0.2)
            return None

    try:
        [first] = wait_until(answers, START_TIMEOUT, what="flower to answer")
        assert first.status_code == 401
        assert requests.get(url, auth=("ops", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("ops", "correct-horse"), timeout=5).status_code == 200
    finally:
        _stop(process)
