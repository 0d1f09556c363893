"""The ``clipqueue`` command, as README shows it: installed in .venv/bin, with clipqueue's commands only."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

CLIPQUEUE = str(Path(sys.executable).parent / "clipqueue")  # what scripts/install.sh puts in .venv/bin


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run([CLIPQUEUE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _commands(help_text: str) -> set[str]:
    listed = help_text.split("Commands:", 1)[1]
    return {line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split()}


def test_help_lists_clipqueues_commands_and_none_of_flasks():
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert _commands(result.stdout) == {"db", "dead-letter", "webhooks", "worker", "worker-health"}
    assert "--app" not in result.stdout  # no Flask option to load some other app either


def test_db_upgrade_creates_the_schema_as_the_procfiles_release_does(tmp_path):
    database = tmp_path / "clipqueue.db"
    result = _run("db", "upgrade", env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{database}"},
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "clips" in tables


def test_dead_letter_commands_read_the_deployments_redis(redis_url, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    assert _run("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    result = _run("dead-letter", "show", "00000000-0000-0000-0000-000000000000", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "not in the dead-letter queue" in result.stderr
