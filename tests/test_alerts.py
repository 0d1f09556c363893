"""The alert rules and the Grafana dashboard in ops/: valid, unit-tested, and about metrics that exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.services import REPO

RULES = REPO / "ops" / "prometheus" / "clipqueue-alerts.yml"
RULE_TESTS = REPO / "ops" / "prometheus" / "clipqueue-alerts.test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "clipqueue-dashboard.json"
METRIC_NAME = re.compile(r"\bclipqueue_[a-z_]+\b")
QUOTED = re.compile(r'"[^"]*"')


def promtool() -> str:
    """promtool from Debian's prometheus package (scripts/install.sh test puts it in .venv/bin)."""
    found = shutil.which("promtool") or shutil.which("promtool", path=str(REPO / ".venv" / "bin"))
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("promtool is missing: scripts/install.sh test installs it")
    pytest.skip("promtool is not installed (run scripts/install.sh test)")


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_alert_rules_are_valid_for_promtool():
    assert "alert" in RULES.name
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_alert_rules_fire_as_their_unit_tests_expect():
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool checks PromQL in rule files only: each query becomes a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard_query_{number}", "expr": expr}
        for number, expr in enumerate(dashboard_expressions())
    ]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_and_dashboard_use_only_metrics_that_metrics_serves(service_factory):
    service = service_factory()
    text = service.client.get("/metrics").get_data(as_text=True)
    families = list(text_string_to_metric_families(text))
    # Families too: one with nothing to count yet (no failed clip) has no sample.
    served = {family.name for family in families} | {s.name for family in families for s in family.samples}
    used = {name for expr in alert_expressions() + dashboard_expressions()
            for name in METRIC_NAME.findall(QUOTED.sub('""', expr))}  # label values are no metric names
    assert used - served == set()
    # Each metric SPEC names, and each gauge the alerts need, is on a panel or in a rule.
    spec_and_alerts = (
        "clipqueue_jobs_total",
        "clipqueue_time_to_ready_seconds_bucket",
        "clipqueue_queue_wait_seconds_bucket",
        "clipqueue_stage_seconds_bucket",
        "clipqueue_source_bytes_total",
        "clipqueue_webhook_deliveries_total",
        "clipqueue_active_worker_count",
        "clipqueue_queue_oldest_age_seconds",
        "clipqueue_redis_up",
        "clipqueue_database_up",
    )
    for name in spec_and_alerts:
        assert name in used, name


def test_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "clipqueue" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # The Prometheus data source is chosen on import, not hard-wired.
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {"${datasource}"}
