"""One-line mistakes on the real node: each job says what is wrong, in its own words, soon.

A missing Secret, an image that cannot be pulled, a memory request no node fits, an output bucket
that does not exist and a memory limit the trainer outgrows: the kubelet, the scheduler, the
validator and the container runtime produce the cause, and the FineTuneJob must carry it on a
condition, in `status.message` and in one Warning event within 60 s of the cause, with no
retry where a retry cannot help. Figures (seconds from apply) go to the e2e figures.

Run: make e2e
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.harness import E2E, TENANT_NS, wait
from tests.e2e.test_real_node import DATA_URI, manifest, trainer_pods, uploaded  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

WITHIN_S = 60


def warnings(e2e: E2E, name: str) -> list[dict[str, Any]]:
    out = e2e.kubectl("get", "events", "-n", TENANT_NS, "-o", "json",
                      "--field-selector", f"involvedObject.name={name},involvedObject.kind=FineTuneJob,type=Warning").stdout
    return list(json.loads(out)["items"])


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def wait_reason(e2e: E2E, name: str, type_: str, reasons: set[str], timeout: float) -> dict[str, Any]:
    """The job once its `type_` condition has one of `reasons` (and a Warning event with it)."""
    def probe() -> dict[str, Any] | None:
        job = e2e.job(name)
        if condition(job, type_).get("reason") in reasons and any(ev["reason"] in reasons for ev in warnings(e2e, name)):
            return job
        return None

    return wait(f"{name}: {type_} with reason in {sorted(reasons)} and a Warning", probe, timeout, every=1.0,
                diagnose=lambda: e2e.diagnostics(name))


@pytest.fixture
def job_name(e2e: E2E, request: pytest.FixtureRequest) -> Iterator[str]:
    """A job name for the test; the job is deleted afterwards (its pods would hold the node)."""
    name = request.param
    yield name
    e2e.kubectl("delete", "finetunejob", name, "-n", TENANT_NS, "--ignore-not-found", "--wait=false", check=False)
    wait(f"{name} gone", lambda: e2e.get(f"{harness.GROUP_PATH}/namespaces/{TENANT_NS}/finetunejobs/{name}") is None, 120)


def _record(e2e: E2E, key: str, started: float) -> float:
    took = round(time.monotonic() - started, 1)
    e2e.figures[f"cause_reported_{key}_s"] = took
    return took


@pytest.mark.parametrize("job_name", ["bad-secret"], indirect=True)
def test_missing_secret_is_named_on_the_job(e2e: E2E, uploaded: Any, job_name: str) -> None:  # noqa: F811
    m = manifest(job_name)
    m["spec"]["model"]["secretRef"] = {"name": "no-such-secret"}
    started = time.monotonic()
    e2e.apply(m)
    job = wait_reason(e2e, job_name, "Validated", {"CreateContainerConfigError"}, WITHIN_S)
    assert _record(e2e, "missing_secret", started) <= WITHIN_S
    assert "no-such-secret" in condition(job, "Validated")["message"] and "no-such-secret" in job["status"]["message"], job["status"]
    assert job["status"]["phase"] == "Validating"  # it waits: creating the Secret is the fix


@pytest.mark.parametrize("job_name", ["bad-image"], indirect=True)
def test_an_image_that_cannot_be_pulled_is_named_on_the_job(e2e: E2E, uploaded: Any, job_name: str) -> None:  # noqa: F811
    runtime = "cpu-e2e-bad-image"
    preset = json.loads(e2e.kubectl("get", "clusterfinetuneruntime", harness.RUNTIME, "-o", "json").stdout)
    bad = {"apiVersion": preset["apiVersion"], "kind": preset["kind"], "metadata": {"name": runtime},
           "spec": {**preset["spec"], "image": "localhost/finetune-trainer:no-such-tag"}}
    e2e.kubectl("apply", "-f", "-", input=json.dumps(bad))
    try:
        m = manifest(job_name)
        m["spec"]["runtimeRef"] = {"name": runtime}
        started = time.monotonic()
        e2e.apply(m)
        job = wait_reason(e2e, job_name, "Validated", {"ErrImagePull", "ImagePullBackOff"}, WITHIN_S)
        assert _record(e2e, "image_pull", started) <= WITHIN_S
        assert "localhost/finetune-trainer:no-such-tag" in condition(job, "Validated")["message"], job["status"]
    finally:
        e2e.kubectl("delete", "finetunejob", job_name, "-n", TENANT_NS, "--ignore-not-found", check=False)
        e2e.kubectl("delete", "clusterfinetuneruntime", runtime, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.parametrize("job_name", ["too-big"], indirect=True)
def test_a_memory_request_no_node_fits_is_named_on_the_job(e2e: E2E, uploaded: Any, job_name: str) -> None:  # noqa: F811
    m = manifest(job_name)
    m["spec"]["resources"]["memory"] = "900Gi"
    e2e.apply(m)
    e2e.wait_phase(job_name, {"Initializing", "Running"}, 300)  # validation passes: the validator asks for little
    started = time.monotonic()
    job = wait_reason(e2e, job_name, "Running", {"Unschedulable"}, WITHIN_S)
    assert _record(e2e, "unschedulable", started) <= WITHIN_S
    assert "Insufficient memory" in condition(job, "Running")["message"], job["status"]
    assert job["status"]["phase"] == "Initializing" and not job["status"].get("restarts")


@pytest.mark.parametrize("job_name", ["bad-bucket"], indirect=True)
def test_an_output_bucket_that_does_not_exist_fails_validation(e2e: E2E, uploaded: Any, job_name: str) -> None:  # noqa: F811
    m = manifest(job_name)
    preset = json.loads(e2e.kubectl("get", "clusterfinetuneruntime", harness.RUNTIME, "-o", "json").stdout)
    m["spec"]["output"] = {**preset["spec"]["defaultOutput"], "uri": "s3://no-such-bucket/out/"}
    started = time.monotonic()
    e2e.apply(m)
    job = e2e.wait_phase(job_name, {"Failed"}, 300)
    _record(e2e, "output_bucket", started)
    failed = condition(job, "Failed")
    assert failed["reason"] == "ValidationFailed" and "no-such-bucket" in failed["message"], job["status"]
    assert "OutputNotWritable" in failed["message"], failed["message"]
    assert not trainer_pods(e2e, job_name) and not job["status"].get("restarts")  # no GPU ever requested
    assert any(ev["reason"] == "ValidationFailed" for ev in warnings(e2e, job_name))


@pytest.mark.parametrize("job_name", ["too-small"], indirect=True)
def test_a_trainer_out_of_memory_fails_at_once_naming_the_limit(e2e: E2E, uploaded: Any, job_name: str) -> None:  # noqa: F811
    m = manifest(job_name)
    m["spec"]["resources"]["memory"] = "160Mi"  # importing torch alone takes more
    m["spec"]["maxRestarts"] = 2
    e2e.apply(m)
    e2e.wait_phase(job_name, {"Initializing", "Running"}, 300)
    started = time.monotonic()
    job = e2e.wait_phase(job_name, {"Failed"}, 180)
    took = _record(e2e, "out_of_memory", started)
    failed = condition(job, "Failed")
    assert failed["reason"] == "OutOfMemory" and "160Mi" in failed["message"], job["status"]
    assert not job["status"].get("restarts"), job["status"]  # the same limit would be outgrown again
    assert any(ev["reason"] == "OutOfMemory" for ev in warnings(e2e, job_name))
    assert took <= 120, took
