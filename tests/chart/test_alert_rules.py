"""The chart's PrometheusRule, evaluated by Prometheus's own rule engine (`promtool test rules`).

Run: .venv/bin/python -m pytest tests/chart/test_alert_rules.py   (needs Debian's `prometheus`
package for /usr/bin/promtool; .ci/run installs it)

Synthetic series with the trainer's and the operator's real metric names and labels drive each
alert: a stalled job, a job with idle GPUs and a failed job fire; a healthy job, a finished job
and busy GPUs do not. The metric names are also checked against the operator's and trainer's
metric definitions, so renaming a metric without the chart fails here.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, one, render

pytestmark = pytest.mark.prometheus

VALUES = {"metrics": {"prometheusRule": {"enabled": True, "stalledMinutes": 30, "gpuIdleMinutes": 15,
                                         "gpuIdlePercent": 5, "severity": "warning"}}}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `make prometheus` (Debian's prometheus package)")
    return path


def _rules_file(tmp_path: pathlib.Path) -> pathlib.Path:
    rule = one(render(VALUES), "PrometheusRule")
    groups = rule["spec"]["groups"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_rules_are_valid_promql(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(_rules_file(tmp_path))],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout


def _alert(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary, "description": description}}


def test_alerts_fire_on_bad_jobs_and_only_on_them(tmp_path: pathlib.Path) -> None:
    rules = _rules_file(tmp_path)
    trainer = 'namespace="team-a", job="{job}", node_rank="{rank}"'
    series = [
        # "stuck": 10 steps in 10 minutes, then the same step for an hour (of 100 planned)
        {"series": "finetune_trainer_step{" + trainer.format(job="stuck", rank=0) + "}", "values": "0+1x10 10x60"},
        {"series": "finetune_trainer_total_steps{" + trainer.format(job="stuck", rank=0) + "}", "values": "100x70"},
        # "healthy": one step a minute all along
        {"series": "finetune_trainer_step{" + trainer.format(job="healthy", rank=0) + "}", "values": "0+1x70"},
        {"series": "finetune_trainer_total_steps{" + trainer.format(job="healthy", rank=0) + "}", "values": "1000x70"},
        # "done": reached its last step 40 minutes ago (uploading), not stalled
        {"series": "finetune_trainer_step{" + trainer.format(job="done", rank=0) + "}", "values": "0+4x25 100x45"},
        {"series": "finetune_trainer_total_steps{" + trainer.format(job="done", rank=0) + "}", "values": "100x70"},
        # GPUs: "idle" at 2% on both GPUs of node 0 all along, training (total_steps known) from
        # minute 11 after a 10-minute download; "healthy" at 90%; "downloading" idle but still
        # fetching its model for the whole hour (total_steps 0): not an idle-GPU alert
        {"series": "finetune_trainer_gpu_utilization_ratio{" + trainer.format(job="idle", rank=0) + ', gpu="0"}', "values": "0.02x70"},
        {"series": "finetune_trainer_gpu_utilization_ratio{" + trainer.format(job="idle", rank=0) + ', gpu="1"}', "values": "0.01x70"},
        {"series": "finetune_trainer_total_steps{" + trainer.format(job="idle", rank=0) + "}", "values": "0x10 500x59"},
        {"series": "finetune_trainer_step{" + trainer.format(job="idle", rank=0) + "}", "values": "0x10 0+1x59"},
        {"series": "finetune_trainer_gpu_utilization_ratio{" + trainer.format(job="healthy", rank=0) + ', gpu="0"}', "values": "0.9x70"},
        {"series": "finetune_trainer_gpu_utilization_ratio{" + trainer.format(job="downloading", rank=0) + ', gpu="0"}', "values": "0x70"},
        {"series": "finetune_trainer_total_steps{" + trainer.format(job="downloading", rank=0) + "}", "values": "0x70"},
        # the operator exports every reason at 0 from its start, and counted one failure at minute 50
        {"series": 'finetune_operator_job_failures_total{reason="RestartLimitExceeded"}', "values": "0x50 1x20"},
        {"series": 'finetune_operator_job_failures_total{reason="DataError"}', "values": "0x70"},
    ]
    sev = {"severity": "warning"}
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "65m", "alertname": "FineTuneJobStalled", "exp_alerts": [_alert(
                    {**sev, "namespace": "team-a", "job": "stuck"},
                    "FineTuneJob team-a/stuck made no progress for 30 minutes",
                    "The training step has not advanced; the job may hang in a collective or on storage. Check `ftctl logs stuck`.")]},
                # 25 minutes after the last step: not yet stalled
                {"eval_time": "35m", "alertname": "FineTuneJobStalled", "exp_alerts": []},
                # training since minute 11: not at 20m (9 minutes in), fired by 27m (16 minutes in),
                # the documented 15 minutes and not twice that; "downloading" never
                {"eval_time": "20m", "alertname": "FineTuneJobGPUsIdle", "exp_alerts": []},
                {"eval_time": "27m", "alertname": "FineTuneJobGPUsIdle", "exp_alerts": [_alert(
                    {**sev, "namespace": "team-a", "job": "idle"},
                    "GPUs of FineTuneJob team-a/idle below 5% for 15 minutes",
                    "Mean GPU utilization is 1.5%. The job holds GPUs it does not use.")]},
                {"eval_time": "65m", "alertname": "FineTuneJobGPUsIdle", "exp_alerts": [_alert(
                    {**sev, "namespace": "team-a", "job": "idle"},
                    "GPUs of FineTuneJob team-a/idle below 5% for 15 minutes",
                    "Mean GPU utilization is 1.5%. The job holds GPUs it does not use.")]},
                {"eval_time": "55m", "alertname": "FineTuneJobFailed", "exp_alerts": [_alert(
                    {**sev, "reason": "RestartLimitExceeded"},
                    "FineTuneJobs failed in the last 10 minutes (RestartLimitExceeded)",
                    "About 1 FineTuneJob(s) failed with reason RestartLimitExceeded. Find them with `kubectl get ftj -A` "
                    "(phase Failed) and read `kubectl describe ftj`.")]},
                {"eval_time": "65m", "alertname": "FineTuneJobFailed", "exp_alerts": []},
                {"eval_time": "45m", "alertname": "FineTuneJobFailed", "exp_alerts": []},
            ],
        }],
    }
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _metric_names_in_chart() -> set[str]:
    text = (CHART / "templates" / "_rules.tpl").read_text()
    text += json.dumps(json.loads((CHART / "files" / "dashboards" / "finetune-jobs.json").read_text()))
    names = set(re.findall(r"\b(finetune_(?:operator|trainer)_[a-z_]+)", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def _defined_metric_names() -> set[str]:
    """Every sample name the operator and the trainer can expose, from their own registries."""
    import finetune_operator.metrics  # noqa: F401  (registers into the default registry)
    from finetune_trainer.metrics import TrainerMetrics
    from prometheus_client import REGISTRY

    def exposed(registry: Any) -> set[str]:
        out = set()
        for family in registry.collect():
            out |= {family.name} | {s.name for s in family.samples}
            if family.type == "counter":  # labelled counters have no sample until first use
                out.add(family.name + "_total")
        return out

    names = exposed(REGISTRY) | exposed(TrainerMetrics("j", "ns", 0).registry)
    # GPU gauges are absent without a GPU; take their names from the collector's source.
    import inspect

    import finetune_trainer.metrics as tm

    names |= {tm.PREFIX + n for n in re.findall(r'PREFIX \+ "([a-z_]+)"', inspect.getsource(tm))}
    return {n for n in names if n.startswith("finetune_")}


def test_chart_uses_only_metrics_that_exist() -> None:
    used = _metric_names_in_chart()
    assert {"finetune_trainer_step", "finetune_trainer_gpu_utilization_ratio", "finetune_operator_job_failures_total"} <= used
    defined = _defined_metric_names()
    assert not used - defined, f"metrics used by the chart but defined nowhere: {sorted(used - defined)}"


def test_dashboard_queries_are_valid_promql(tmp_path: pathlib.Path) -> None:
    """Every panel query of the Grafana dashboard parses (checked as recording rules by promtool,
    with the dashboard's $variables replaced by a match-all regex)."""
    cm = one(render({"metrics": {"dashboard": {"enabled": True}}}), "ConfigMap")
    dashboard = json.loads(cm["data"]["finetune-jobs.json"])
    panels = dashboard["panels"]
    titles = {p["title"] for p in panels}
    assert {"Progress", "Training loss", "Tokens per second", "GPU utilization", "GPU memory used"} <= titles
    exprs = [t["expr"].replace("$namespace", ".*").replace("$job", ".*") for p in panels for t in p["targets"]]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables
