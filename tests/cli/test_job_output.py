"""Where `ftctl download` finds a finished job's output (pure: a job dict in, location out).

Run: .venv/bin/python -m pytest tests/cli/test_job_output.py
"""

from __future__ import annotations

from typing import Any

from ftctl.main import _job_output


class NoRuntimeAccess:
    """A tenant bound to namespace `edit`: reading a cluster-scoped runtime is forbidden."""

    def get_runtime(self, name: str) -> dict[str, Any]:
        raise AssertionError(f"read ClusterFineTuneRuntime {name}: a tenant may not")


class Runtimes:
    def __init__(self, **runtimes: dict[str, Any]) -> None:
        self.runtimes = runtimes

    def get_runtime(self, name: str) -> dict[str, Any]:
        return self.runtimes[name]


def finished(spec: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "run"}, "spec": spec, "status": {"phase": "Succeeded", "output": {"manifestUri": "s3://out/team/run/manifest.json"}, **status}}


def test_the_runtime_copy_in_status_gives_the_endpoint_without_reading_the_runtime() -> None:
    copy = {"name": "gpu", "spec": {"image": "t:1", "defaultOutput": {"uri": "s3://out/", "endpoint": "http://minio:9000"}}}
    job = finished({"runtimeRef": {"name": "gpu"}}, runtime=copy)
    assert _job_output(NoRuntimeAccess(), job) == ("s3://out/team/run/", "http://minio:9000")


def test_a_job_from_before_the_copy_reads_its_runtime() -> None:
    runtime = {"spec": {"defaultOutput": {"uri": "s3://out/", "endpoint": "http://s3.local"}}}
    assert _job_output(Runtimes(gpu=runtime), finished({"runtimeRef": {"name": "gpu"}})) == ("s3://out/team/run/", "http://s3.local")


def test_the_jobs_own_output_wins() -> None:
    job = finished({"output": {"uri": "s3://mine/run/", "endpoint": "http://mine:9000"}}, runtime={"name": "gpu", "spec": {"defaultOutput": {"uri": "s3://x/", "endpoint": "http://other"}}})
    assert _job_output(NoRuntimeAccess(), job)[1] == "http://mine:9000"
