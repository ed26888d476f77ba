"""FineTuneJobFailed fed with what the operator really exports: a job fails on the real control
plane, the operator's /metrics is scraped before and after, and those samples (names, labels and
values as scraped) are the input series of `promtool test rules` on the chart's own rules."""

from __future__ import annotations

import pathlib
import subprocess

import pytest
import yaml
from finetune_operator import constants as c

from tests.chart.test_alert_rules import _alert, _rules_file, promtool
from tests.operator.cluster_support import Kube, OperatorProcess
from tests.operator.helpers import minimal_spec
from tests.support import metrics as prom

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]
FAILURES = "finetune_operator_job_failures_total"
ct = c.contract


def exported(text: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (name, labels), value in prom.samples(text).items() if name == FAILURES}


def series(labels: frozenset[tuple[str, str]]) -> str:
    return FAILURES + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"


def test_a_real_failure_fires_the_failed_alert(kube: Kube, ftop: OperatorProcess, kube_namespace: str, tmp_path: pathlib.Path) -> None:
    kube.wait_others_gone(kube_namespace)
    before = exported(ftop.metrics())
    assert before, f"{FAILURES} is not exported before any failure (the alert could not see the first one)"
    # A preset that allows full fine-tuning only, and a LoRA job naming it: the operator fails it.
    runtime = f"full-only-{kube_namespace}"
    body = {"apiVersion": ct.API_VERSION, "kind": ct.KIND_RUNTIME, "metadata": {"name": runtime}, "spec": {"image": "registry.invalid/trainer:test", "allowedMethods": ["full"]}}
    kube.custom.create_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, body)
    try:
        kube.create_ftj(kube_namespace, "not-allowed", {**minimal_spec(), "runtimeRef": {"name": runtime}})
        st = kube.wait_phase(kube_namespace, "not-allowed", "Failed", 60)
    finally:
        kube.custom.delete_cluster_custom_object(ct.GROUP, ct.VERSION, ct.PLURAL_RUNTIME, runtime)
    reason = next(x["reason"] for x in st["conditions"] if x["type"] == "Failed")
    after = kube.wait(lambda: (a := exported(ftop.metrics())) != before and a, "the failure counted", 30)
    moved = {labels for labels in after if after[labels] != before.get(labels)}
    assert moved == {frozenset({("reason", reason)})}, moved
    # Minute 0-9 as scraped before, minute 10 on as scraped after; a series absent before is "_".
    inputs = [
        {"series": series(labels), "values": (f"{before[labels]:g}x9" if labels in before else "_x9") + f" {value:g}x30"}
        for labels, value in after.items()
    ]
    tests = {
        "rule_files": [str(_rules_file(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": inputs,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "FineTuneJobFailed", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "FineTuneJobFailed", "exp_alerts": [_alert(
                    {"severity": "warning", "reason": reason},
                    f"FineTuneJobs failed in the last 10 minutes ({reason})",
                    f"About 1 FineTuneJob(s) failed with reason {reason}. Find them with `kubectl get ftj -A` "
                    "(phase Failed) and read `kubectl describe ftj`.")]},
                {"eval_time": "35m", "alertname": "FineTuneJobFailed", "exp_alerts": []},
            ],
        }],
    }
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\n" + test_file.read_text()
    assert reason == c.REASON_METHOD_NOT_ALLOWED
