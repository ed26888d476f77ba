"""Two trainer "pods" run from exactly what the operator renders for a 2-node job.

The operator's builders render the ConfigMap (TrainerConfig) and the Indexed Job; each of the two
processes gets the Job's container command (`python -m finetune_trainer.launch -m
finetune_trainer train --config ...`), its env and the rendered TrainerConfig. Only what a
kubelet supplies is filled in (tests/support/pods.py): secretKeyRef values, the completion index
behind PET_NODE_RANK, the mounts' local directories, and 127.0.0.1 plus free ports for the
headless DNS name and the fixed ports (both "pods" share one host here). Then rank 0's
termination message goes through the operator's views and `decide`, as the kubelet reports it.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
from typing import Any

import pytest
from finetune_operator import builders
from finetune_operator import constants as c
from finetune_operator.api import parse_job
from finetune_operator.plan import decide
from finetune_operator.resolve import JobMeta, Resolved, resolve
from finetune_operator.views import pod_view

from tests.operator.helpers import CONFIG, DEFAULT_RUNTIME, UID, VALIDATED, job, observed
from tests.support import pods as kubelet
from tests.support.caches import CACHE_ROOT, cache_env
from tests.support.ports import free_port
from tests.support.s3 import S3Server

from .helpers import REPO, chat_rows, write_jsonl

pytestmark = pytest.mark.slow
ct = c.contract
SECRET = "s3-creds"
NAME = "rendered"


def two_node_spec(s3: S3Server, bucket: str) -> dict[str, Any]:
    source = {"secretRef": {"name": SECRET}, "endpoint": s3.endpoint}
    return {
        "model": {"uri": f"s3://{bucket}/model/", **source},
        "dataset": {"uri": f"s3://{bucket}/chat.jsonl", "format": "chat", "validationSplit": 0.1, **source},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 6, "batchSize": 4, "maxSeqLength": 64, "learningRate": 0.01, "warmupRatio": 0.0},
        "checkpoint": {"everySteps": 3},
        "resources": {"nodes": 2, "gpusPerNode": 0, "cpu": "1", "memory": "2Gi"},
        "output": {"uri": f"s3://{bucket}/out/", **source},
        "maxRestarts": 1,
    }


def test_two_pods_from_the_rendered_job_train_and_report_to_the_operator(s3: S3Server, tiny_llama: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bucket = s3.create_bucket()
    s3.upload_dir(tiny_llama, f"s3://{bucket}/model/")
    s3.upload_file(write_jsonl(tmp_path / "chat.jsonl", chat_rows(64)), f"s3://{bucket}/chat.jsonl")
    spec = two_node_spec(s3, bucket)
    r = resolve(JobMeta(NAME, "team", UID, 1), parse_job(spec), DEFAULT_RUNTIME, True, CONFIG)
    assert isinstance(r, Resolved), r
    config_text = builders.build_configmap(r)["data"][ct.CONFIG_FILE_NAME]
    manifest = builders.build_job(r, 0, False)
    assert manifest["spec"]["completions"] == manifest["spec"]["parallelism"] == 2
    ctr = kubelet.container(manifest, c.TRAINER_CONTAINER)
    rendezvous = str(free_port())
    master = {ct.ENV_MASTER_ADDR: "127.0.0.1", ct.ENV_MASTER_ADDR_COMPAT: "127.0.0.1", ct.ENV_MASTER_PORT: rendezvous, ct.ENV_MASTER_PORT_COMPAT: rendezvous}
    # what the rendered container says, before any local substitution
    rendered_env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert rendered_env[ct.ENV_NNODES] == "2" and rendered_env[ct.ENV_MASTER_ADDR] == f"{NAME}-0.{NAME}-workers.team.svc"
    assert rendered_env[ct.ENV_CONFIG_PATH] == ct.CONFIG_PATH and ct.CONFIG_PATH in ctr["command"]

    launchers, roots = [], []
    for index in (0, 1):
        root = tmp_path / f"pod-{index}"
        paths = kubelet.pod_paths(root)
        (pathlib.Path(paths[ct.CONFIG_MOUNT_DIR]) / ct.CONFIG_FILE_NAME).write_text(config_text)
        env = {
            **kubelet.image_env(REPO / "trainer_image" / "Dockerfile", paths),
            **cache_env(),
            **kubelet.local_env(
                ctr,
                secrets={(SECRET, ct.SECRET_KEY_AWS_ACCESS_KEY_ID): s3.access_key, (SECRET, ct.SECRET_KEY_AWS_SECRET_ACCESS_KEY): s3.secret_key},
                fields={f"metadata.annotations['{ct.ANNOTATION_JOB_COMPLETION_INDEX}']": str(index)},
                paths=paths,
                metadata=kubelet.template_metadata(manifest),
                values={**master, ct.ENV_METRICS_PORT: str(free_port())},
            ),
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        assert env[ct.ENV_NODE_RANK] == str(index) and env[ct.ENV_NNODES] == "2" and env[ct.ENV_ATTEMPT] == "0"
        launchers.append(subprocess.Popen(kubelet.local_argv(ctr, paths), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(CACHE_ROOT)))
        roots.append(paths)
    results = [p.communicate(timeout=900) for p in launchers]
    for p, (_out, err) in zip(launchers, results, strict=True):
        assert p.returncode == 0, err[-5000:]

    messages = [kubelet.kubelet_message(pathlib.Path(paths[ct.TERMINATION_MESSAGE_PATH])) for paths in roots]
    assert messages[0] is not None and messages[1] is None  # rank 0 reports; the others only on failure
    summary = json.loads(messages[0])
    assert summary["status"] == "Succeeded" and summary["exitCode"] == 0 and summary["steps"] == 6

    # the rendered TrainerConfig is what the trainer ran: its manifest records it
    manifest_bytes = s3.get_bytes(f"s3://{bucket}/out/{ct.MANIFEST_NAME}")
    uploaded = json.loads(manifest_bytes)
    assert uploaded["worldSize"] == 2 and uploaded["jobName"] == NAME and uploaded["namespace"] == "team"
    assert uploaded["hyperparameters"]["maxSteps"] == 6 and uploaded["method"]["lora"]["r"] == 8
    assert summary["manifestSha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    keys = s3.list_keys(f"s3://{bucket}/out/checkpoints/step-3/")
    assert {"out/checkpoints/step-3/rng-rank0.pt", "out/checkpoints/step-3/rng-rank1.pt"} <= set(keys), keys

    # the operator reads the same file as the kubelet reports it
    bodies = [
        kubelet.terminated_pod(f"{NAME}-{i}-x", job=NAME, component=ct.COMPONENT_TRAINER, container_name=c.TRAINER_CONTAINER,
                               exit_code=0, message=messages[i], index=i, attempt=0, job_uid=UID)
        for i in (0, 1)
    ]
    running = {"phase": "Running", "conditions": [VALIDATED], "startTime": "2026-01-01T12:00:00Z"}
    plan = decide(observed(spec, running, job_view=job(complete=True), pods=tuple(pod_view(b) for b in bodies)))
    assert plan.status.phase == c.PHASE_SUCCEEDED and plan.status.output is not None
    assert plan.status.output.adapter_uri == f"s3://{bucket}/out/adapter/" == summary["adapterUri"]
    assert plan.status.output.manifest_uri == f"s3://{bucket}/out/{ct.MANIFEST_NAME}"
    assert plan.status.output.sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert plan.status.trained_tokens == summary["trainedTokens"] > 0
