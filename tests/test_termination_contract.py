"""The termination-message contract across the seam: the real trainer writes the file, the
operator's views and `decide` read what the kubelet would report from it.

The trainer runs exactly as the operator's builders render its containers (command, env,
TrainerConfig; see tests/support/pods.py for the few values a kubelet supplies); the kubelet's
part is modelled as it is documented: the first 4096 bytes of the file become
`state.terminated.message`. The success summary of a real training run crosses the same seam in
tests/trainer/test_rendered_pods.py.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import pytest
from finetune_operator import builders
from finetune_operator import constants as c
from finetune_operator.api import parse_job
from finetune_operator.plan import Plan, decide
from finetune_operator.resolve import JobMeta, Resolved, resolve
from finetune_operator.views import pod_view

from tests.operator.helpers import CONFIG, DEFAULT_RUNTIME, UID, VALIDATED, job, observed
from tests.support import pods as kubelet
from tests.support.caches import CACHE_ROOT, cache_env
from tests.support.ports import free_port
from tests.support.s3 import S3Server, s3, s3_server  # noqa: F401  (pytest fixtures)

ct = c.contract
REPO = pathlib.Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "trainer_image" / "Dockerfile"
SECRET = "s3-creds"
RUNNING_STATUS: dict[str, Any] = {"phase": "Running", "conditions": [VALIDATED], "startTime": "2026-01-01T12:00:00Z"}
BAD_ROW = 7


def spec_for(endpoint: str, bucket: str, nodes: int = 1) -> dict[str, Any]:
    source = {"secretRef": {"name": SECRET}, "endpoint": endpoint}
    return {
        "model": {"uri": f"s3://{bucket}/model/", **source},
        "dataset": {"uri": f"s3://{bucket}/chat.jsonl", "format": "chat", **source},
        "resources": {"nodes": nodes, "gpusPerNode": 0, "cpu": "1", "memory": "2Gi"},
        "output": {"uri": f"s3://{bucket}/out/", **source},
        "hyperparameters": {"maxSteps": 4, "batchSize": 4, "maxSeqLength": 64},
        "maxRestarts": 2,
    }


def rendered(spec: dict[str, Any], name: str = "contract") -> Resolved:
    r = resolve(JobMeta(name, "ns", UID, 1), parse_job(spec), DEFAULT_RUNTIME, True, CONFIG)
    assert isinstance(r, Resolved), r
    return r


def run_container(r: Resolved, manifest: dict[str, Any], name: str, root: pathlib.Path, server: S3Server, config: str | None = None) -> tuple[int, str | None, str]:
    """Run container `name` of `manifest` as a local process; (exit code, kubelet message, stderr)."""
    paths = kubelet.pod_paths(root)
    cm = builders.build_configmap(r)
    (pathlib.Path(paths[ct.CONFIG_MOUNT_DIR]) / ct.CONFIG_FILE_NAME).write_text(config or cm["data"][ct.CONFIG_FILE_NAME])
    ctr = kubelet.container(manifest, name)
    port = str(free_port())
    env = {
        **kubelet.image_env(DOCKERFILE, paths),
        **cache_env(),  # offline: nothing may come from the internet
        **kubelet.local_env(
            ctr,
            secrets={(SECRET, ct.SECRET_KEY_AWS_ACCESS_KEY_ID): server.access_key, (SECRET, ct.SECRET_KEY_AWS_SECRET_ACCESS_KEY): server.secret_key},
            fields={f"metadata.annotations['{ct.ANNOTATION_JOB_COMPLETION_INDEX}']": "0"},
            paths=paths,
            metadata=kubelet.template_metadata(manifest),
            values={ct.ENV_MASTER_ADDR: "127.0.0.1", ct.ENV_MASTER_ADDR_COMPAT: "127.0.0.1", ct.ENV_MASTER_PORT: port, ct.ENV_MASTER_PORT_COMPAT: port, ct.ENV_METRICS_PORT: "0"},
        ),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.run(kubelet.local_argv(ctr, paths), env=env, capture_output=True, text=True, timeout=600, cwd=str(CACHE_ROOT))
    return proc.returncode, kubelet.kubelet_message(pathlib.Path(paths[ct.TERMINATION_MESSAGE_PATH])), proc.stderr


@pytest.fixture(scope="module")
def uploaded(s3_server: S3Server) -> str:  # noqa: F811
    """A bucket with a tiny model (config and tokenizer are all `validate` reads) and a chat
    dataset whose row BAD_ROW is not JSON."""
    from tests.trainer.helpers import build_tiny_llama, chat_rows

    model = build_tiny_llama(CACHE_ROOT / "models" / "tiny-llama-h64-l2-v2")
    bucket = s3_server.create_bucket()
    s3_server.upload_dir(model, f"s3://{bucket}/model/")
    lines = [json.dumps(row) for row in chat_rows(20)]
    lines[BAD_ROW - 1] = '{"messages": [ not json'
    s3_server.put_bytes(f"s3://{bucket}/chat.jsonl", ("\n".join(lines) + "\n").encode())
    return bucket


def failed_trainer(message: str | None, exit_code: int) -> Plan:
    """decide() for a running 2-node attempt whose worker 0 terminated as the kubelet reports it."""
    body = kubelet.terminated_pod("contract-0-abcde", job="contract", component=ct.COMPONENT_TRAINER, container_name=c.TRAINER_CONTAINER,
                                  exit_code=exit_code, message=message, index=0, attempt=0, job_uid=UID)
    running = kubelet.terminated_pod("contract-1-fghij", job="contract", component=ct.COMPONENT_TRAINER, container_name=c.TRAINER_CONTAINER,
                                     exit_code=0, message=None, index=1, attempt=0, job_uid=UID)
    running["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"name": c.TRAINER_CONTAINER, "state": {"running": {}}}]}
    spec = spec_for("http://127.0.0.1:1", "bucket", nodes=2)
    return decide(observed(spec, RUNNING_STATUS, job_view=job(), pods=(pod_view(body), pod_view(running))))


def cond(plan: Plan, type_: str) -> Any:
    found = plan.status.condition(type_)
    assert found is not None, type_
    return found


# --- config error --------------------------------------------------------------------------------------
def test_config_error_written_by_the_trainer_fails_the_job_as_config_error(s3: S3Server, uploaded: str, tmp_path: pathlib.Path) -> None:  # noqa: F811
    """The Job's trainer container (launch -> torchrun -> finetune_trainer train), one node, with the
    rendered TrainerConfig made invalid: exit 2 from the launcher, and the operator fails the job
    at once with ConfigError naming the bad field in the trainer's words."""
    r = rendered(spec_for(s3.endpoint, uploaded))
    config = json.loads(builders.build_configmap(r)["data"][ct.CONFIG_FILE_NAME])
    config["hyperparameters"]["learningRate"] = -1.0
    code, message, stderr = run_container(r, builders.build_job(r, 0, False), c.TRAINER_CONTAINER, tmp_path, s3, json.dumps(config))
    assert code == ct.EXIT_CONFIG_ERROR, stderr[-3000:]
    assert message is not None
    doc = json.loads(message)
    assert (doc["status"], doc["reason"], doc["exitCode"]) == ("Failed", "InvalidConfig", ct.EXIT_CONFIG_ERROR)
    assert "hyperparameters.learningRate" in doc["message"]

    plan = failed_trainer(message, code)
    assert plan.status.phase == c.PHASE_FAILED and plan.status.restarts == 0 and not plan.delete
    failed = cond(plan, c.COND_FAILED)
    assert failed.reason == c.REASON_CONFIG_ERROR
    assert "worker 0 (pod contract-0-abcde) exited with code 2 (configuration error): InvalidConfig: invalid TrainerConfig" in failed.message
    assert "hyperparameters.learningRate" in failed.message and "{" not in failed.message


# --- data error --------------------------------------------------------------------------------------------
def test_data_error_written_by_the_validator_names_the_row(s3: S3Server, uploaded: str, tmp_path: pathlib.Path) -> None:  # noqa: F811
    """The validation pod's container (`finetune_trainer validate`) on a dataset with a broken row:
    exit 3 and a DataError naming the row; the operator fails the job (ValidationFailed) showing
    `reason: message`; the same file from a trainer pod fails it as DataError, never retried."""
    r = rendered(spec_for(s3.endpoint, uploaded))
    code, message, stderr = run_container(r, builders.build_validator(r), c.VALIDATOR_CONTAINER, tmp_path, s3)
    assert code == ct.EXIT_DATA_ERROR, stderr[-3000:]
    assert message is not None
    doc = json.loads(message)
    assert (doc["status"], doc["reason"], doc["exitCode"]) == ("Failed", "DataError", ct.EXIT_DATA_ERROR)
    assert f"line {BAD_ROW}" in doc["message"] or f"row {BAD_ROW}" in doc["message"], doc["message"]

    body = kubelet.terminated_pod("contract-validate", job="contract", component=ct.COMPONENT_VALIDATOR, container_name=c.VALIDATOR_CONTAINER,
                                  exit_code=code, message=message, attempt=None, job_uid=UID)
    plan = decide(observed(spec_for("http://127.0.0.1:1", "bucket", nodes=2), {}, validator=pod_view(body)))
    failed = cond(plan, c.COND_FAILED)
    assert plan.status.phase == c.PHASE_FAILED and failed.reason == c.REASON_VALIDATION_FAILED
    assert failed.message.startswith("validation pod contract-validate failed (exit code 3, model or dataset error): DataError: "), failed.message
    assert doc["message"].splitlines()[0][:200] in failed.message
    assert not plan.apply, "a failed validation must never create the training Job"

    trainer = failed_trainer(message, code)
    assert trainer.status.phase == c.PHASE_FAILED and cond(trainer, c.COND_FAILED).reason == c.REASON_DATA_ERROR
    assert trainer.status.restarts == 0 and not trainer.delete


# --- summaries long enough to be cut -------------------------------------------------------------------------
def run_main(r: Resolved, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, outcome: Any) -> tuple[int, str | None]:
    """finetune_trainer.__main__.main() on the rendered TrainerConfig, with `train.run` replaced by
    `outcome` (the summary the training loop returns, or an exception it raises)."""
    import finetune_trainer.__main__ as trainer_main
    from finetune_trainer import train

    def fake_run(cfg: Any) -> dict[str, Any]:
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome)

    monkeypatch.setattr(train, "run", fake_run)
    monkeypatch.delenv("RANK", raising=False)
    config = tmp_path / ct.CONFIG_FILE_NAME
    config.write_text(builders.build_configmap(r)["data"][ct.CONFIG_FILE_NAME])
    termination = tmp_path / "termination-log"
    code = trainer_main.main(["train", "--config", str(config), "--termination-log", str(termination)])
    return code, kubelet.kubelet_message(termination)


def test_a_cut_success_summary_keeps_the_output_location_and_checksum(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A success summary over 4096 bytes (train.py's keys plus a long extra entry) is cut by the
    trainer before the kubelet would cut it: what reaches the operator still parses, and the
    status gets the adapter URI, manifest URI and sha256 and the trained tokens."""
    r = rendered(spec_for("http://127.0.0.1:1", "bucket", nodes=2))
    summary = {
        "status": "Succeeded", "steps": 30, "loss": 0.25, "evalLoss": 0.3, "trainedTokens": 12345, "tokensPerSecond": 99.5, "epochs": 1.0,
        "outputUri": "s3://bucket/out/", "adapterUri": "s3://bucket/out/adapter/", "manifestUri": "s3://bucket/out/manifest.json",
        "manifestSha256": "ab" * 32, "notes": "é" * 5000,  # a long entry, multi-byte: the limit is in bytes
    }
    code, message = run_main(r, tmp_path, monkeypatch, summary)
    capsys.readouterr()
    assert code == 0 and message is not None
    assert len(json.dumps(summary).encode()) > kubelet.KUBELET_MESSAGE_LIMIT >= len(message.encode())
    success = kubelet.terminated_pod("contract-0-abcde", job="contract", component=ct.COMPONENT_TRAINER, container_name=c.TRAINER_CONTAINER,
                                     exit_code=0, message=message, index=0, attempt=0, job_uid=UID)
    other = kubelet.terminated_pod("contract-1-fghij", job="contract", component=ct.COMPONENT_TRAINER, container_name=c.TRAINER_CONTAINER,
                                   exit_code=0, message=None, index=1, attempt=0, job_uid=UID)
    plan = decide(observed(spec_for("http://127.0.0.1:1", "bucket", nodes=2), RUNNING_STATUS, job_view=job(complete=True),
                           pods=(pod_view(success), pod_view(other))))
    assert plan.status.phase == c.PHASE_SUCCEEDED
    assert plan.status.output is not None
    assert (plan.status.output.adapter_uri, plan.status.output.manifest_uri, plan.status.output.sha256) == (
        summary["adapterUri"], summary["manifestUri"], summary["manifestSha256"])
    assert plan.status.trained_tokens == 12345
    assert plan.status.progress is not None and (plan.status.progress.step, plan.status.progress.loss) == (30, 0.25)


def test_a_cut_failure_message_keeps_the_exit_code_and_the_reason(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A training error with a message far over 4096 bytes: the file is valid JSON within the
    kubelet's limit with exitCode 4, and the operator restarts the group showing the reason and
    the start of the message."""
    from finetune_trainer.errors import TrainerError

    r = rendered(spec_for("http://127.0.0.1:1", "bucket", nodes=2))
    code, message = run_main(r, tmp_path, monkeypatch, TrainerError("NCCL watchdog timeout; " + "ü" * 6000))
    capsys.readouterr()
    assert code == ct.EXIT_TRAINING_ERROR and message is not None
    assert len(message.encode()) <= kubelet.KUBELET_MESSAGE_LIMIT
    doc = json.loads(message)
    assert doc["exitCode"] == ct.EXIT_TRAINING_ERROR and doc["message"].endswith("... [truncated]")
    plan = failed_trainer(message, code)
    assert plan.status.phase == c.PHASE_INITIALIZING and plan.status.restarts == 1 and plan.status.attempt == 1
    assert "exited with code 4: TrainingFailed: NCCL watchdog timeout; üü" in cond(plan, c.COND_RUNNING).message
