"""Desired-state builders: tables of properties and golden YAML for every example manifest.

Regenerate the golden files after an intended change with
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/operator/test_builders.py
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import pytest
import yaml
from finetune_operator import builders
from finetune_operator import constants as c
from finetune_operator.api import parse_job, parse_runtime
from finetune_operator.resolve import JobMeta, OperatorConfig, Problem, Resolved, resolve

from tests.operator.helpers import (
    CONFIG,
    DEFAULT_RUNTIME,
    GOLDEN,
    UID,
    example_jobs,
    example_runtimes,
    load,
    minimal_spec,
)

ct = c.contract
CREDENTIAL_ENV = {ct.ENV_AWS_ACCESS_KEY_ID, ct.ENV_AWS_SECRET_ACCESS_KEY, ct.ENV_AWS_SESSION_TOKEN, ct.ENV_HF_TOKEN}


def resolved_example(path: pathlib.Path) -> Resolved:
    doc = load(path)
    spec = parse_job(doc["spec"])
    meta = JobMeta(doc["metadata"]["name"], doc["metadata"]["namespace"], UID, 1)
    runtimes = example_runtimes()
    runtime = runtimes.get(spec.runtime_ref.name) if spec.runtime_ref else DEFAULT_RUNTIME
    r = resolve(meta, spec, runtime, runtime is not None, CONFIG)
    assert isinstance(r, Resolved), r
    return r


def resolved(spec: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None) -> Resolved | Problem:
    parsed = parse_job(spec or minimal_spec())
    rt = parse_runtime(runtime) if runtime is not None else (DEFAULT_RUNTIME if parsed.runtime_ref is None else None)
    return resolve(JobMeta("job", "ns", UID, 1), parsed, rt, rt is not None, CONFIG)


def children(r: Resolved) -> list[dict[str, Any]]:
    suspend = bool(r.spec.suspend or r.spec.queue_name)
    return [*builders.build_children(r, 0, suspend), builders.build_validator(r)]


EXAMPLES = example_jobs()


def test_there_are_examples_of_each_kind() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"lora-chat", "classification-minilm", "deepspeed-full"} <= names
    assert "a100-lora" in example_runtimes()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_golden_children(path: pathlib.Path) -> None:
    rendered = "---\n".join(yaml.safe_dump(m, sort_keys=True, width=120) for m in children(resolved_example(path)))
    golden = GOLDEN / f"{path.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"{golden} missing: run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"children of {path.name} differ from {golden.name} (UPDATE_GOLDEN=1 if intended)"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_builders_are_deterministic(path: pathlib.Path) -> None:
    assert children(resolved_example(path)) == children(resolved_example(path))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_job_shape(path: pathlib.Path) -> None:
    r = resolved_example(path)
    cm, svc, job, validator = (m for m in children(r) if m["kind"] != "Workload")
    name = r.meta.name
    assert [cm["metadata"]["name"], svc["metadata"]["name"], job["metadata"]["name"], validator["metadata"]["name"]] == [
        f"{name}-config",
        f"{name}-workers",
        name,
        f"{name}-validate",
    ]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == r.nodes
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    for m in (cm, svc, job, validator):
        (owner,) = m["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": name, "uid": UID, "controller": True, "blockOwnerDeletion": True}
        assert m["metadata"]["labels"][ct.LABEL_MANAGED_BY] == ct.MANAGED_BY
        assert m["metadata"]["labels"][ct.LABEL_JOB_NAME] == name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_trainer_container(path: pathlib.Path) -> None:
    r = resolved_example(path)
    job = builders.build_job(r, 2, None)
    pod = job["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    env = {e["name"]: e for e in ctr["env"]}
    master = f"{r.meta.name}-0.{r.meta.name}-workers.{r.meta.namespace}.svc"
    assert env[ct.ENV_NNODES]["value"] == str(r.nodes)
    assert env[ct.ENV_NPROC_PER_NODE]["value"] == str(max(r.gpus_per_node, 1))
    assert env[ct.ENV_NODE_RANK]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{ct.ANNOTATION_JOB_COMPLETION_INDEX}']"
    assert env[ct.ENV_MASTER_ADDR]["value"] == env[ct.ENV_MASTER_ADDR_COMPAT]["value"] == master
    assert env[ct.ENV_MASTER_PORT]["value"] == env[ct.ENV_MASTER_PORT_COMPAT]["value"] == str(ct.RENDEZVOUS_PORT)
    assert env[ct.ENV_CONFIG_PATH]["value"] == ct.CONFIG_PATH
    # the attempt reaches the trainer from the pod's own label: the containers of every attempt
    # are the same (Kueue keeps one Workload across attempts only while they are)
    assert env[ct.ENV_ATTEMPT]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{ct.LABEL_ATTEMPT}']"
    assert job["metadata"]["labels"][ct.LABEL_ATTEMPT] == job["spec"]["template"]["metadata"]["labels"][ct.LABEL_ATTEMPT] == "2"
    assert builders.build_job(r, 0, None)["spec"]["template"]["spec"]["containers"] == pod["containers"]
    assert "RANK" not in env and "WORLD_SIZE" not in env
    assert ctr["command"] == ["python", "-m", "finetune_trainer.launch", "-m", "finetune_trainer", "train", "--config", ct.CONFIG_PATH]
    assert env[ct.ENV_TERMINATION_MESSAGE_PATH]["value"] == ct.TERMINATION_MESSAGE_PATH == ctr["terminationMessagePath"]
    # credentials: only secretKeyRef, never literal values
    for key in CREDENTIAL_ENV & env.keys():
        assert "value" not in env[key] and "secretKeyRef" in env[key]["valueFrom"]
    # GPUs, ports, volumes
    limits = ctr["resources"].get("limits", {})
    if r.gpus_per_node:
        assert limits[c.GPU_RESOURCE] == str(r.gpus_per_node)
    else:
        assert c.GPU_RESOURCE not in limits
    assert {(p["name"], p["containerPort"]) for p in ctr["ports"]} == {("rendezvous", 29500), ("metrics", 9400)}
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory"}
    assert mounts[ct.CONFIG_MOUNT_DIR]["readOnly"] is True
    assert vols[mounts[ct.CONFIG_MOUNT_DIR]["name"]]["configMap"]["name"] == f"{r.meta.name}-config"
    for writable in (ct.TMP_DIR, ct.WORK_DIR, ct.SHM_DIR):
        assert "emptyDir" in vols[mounts[writable]["name"]]
    # PSA restricted
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctr["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never"


def test_pod_failure_policy_ignores_disruptions_and_fails_fast_on_config_errors() -> None:
    rules = builders.pod_failure_policy()["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [ct.EXIT_PREEMPTED]
    assert rules[2]["action"] == "FailJob" and rules[2]["onExitCodes"]["values"] == list(ct.NON_RETRYABLE_EXIT_CODES)


@pytest.mark.parametrize(
    ("spec_over", "suspend", "want_suspend", "want_queue"),
    [
        ({}, False, False, None),
        ({"suspend": True}, True, True, None),
        ({"queueName": "team-a"}, True, True, "team-a"),
        ({"queueName": "team-a"}, None, None, "team-a"),  # leave suspend to Kueue once admitted
    ],
)
def test_suspend_and_queue(spec_over: dict[str, Any], suspend: bool | None, want_suspend: bool | None, want_queue: str | None) -> None:
    r = resolved(minimal_spec(**spec_over))
    assert isinstance(r, Resolved)
    job = builders.build_job(r, 0, suspend)
    assert job["spec"].get("suspend") == want_suspend
    assert job["metadata"]["labels"].get(ct.LABEL_KUEUE_QUEUE) == want_queue


def test_validator_takes_no_gpu_and_runs_validate() -> None:
    r = resolved_example(next(p for p in EXAMPLES if p.stem == "deepspeed-full"))
    pod = builders.build_validator(r)
    (ctr,) = pod["spec"]["containers"]
    assert ctr["command"][-4:] == ["finetune_trainer", "validate", "--config", ct.CONFIG_PATH]
    assert c.GPU_RESOURCE not in ctr["resources"].get("limits", {})
    assert c.GPU_RESOURCE not in ctr["resources"].get("requests", {})
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]


def test_configmap_holds_the_rendered_trainer_config_and_no_secret_values() -> None:
    r = resolved_example(next(p for p in EXAMPLES if p.stem == "classification-minilm"))
    cm = builders.build_configmap(r)
    text = cm["data"][ct.CONFIG_FILE_NAME]
    cfg = yaml.safe_load(text)
    assert cfg["apiVersion"] == "finetune.dev/trainer-v1"
    assert cfg["jobName"] == "minilm-sentiment" and cfg["namespace"] == "team-a"
    assert cfg["dataset"]["format"] == "classification"
    assert cfg["metricsPort"] == ct.METRICS_PORT
    # Secret *names* may travel (so the trainer knows which were given); values never can: the
    # operator never reads a Secret, so there is nothing to leak. No env-style keys either.
    assert "AWS_SECRET_ACCESS_KEY" not in text and "HF_TOKEN" not in text


def test_runtime_defaults_placement_and_default_output() -> None:
    r = resolved_example(next(p for p in EXAMPLES if p.stem == "lora-chat"))
    rt = example_runtimes()["a100-lora"]
    assert r.image == c.DEFAULT_IMAGE and rt.image is None and r.gpus_per_node == 8 and r.nodes == 2 and r.memory == "400Gi"
    assert r.output.uri == "s3://ml-artifacts/finetunes/team-a/llama-chat-lora/"
    assert r.output.secret_ref is not None and r.output.secret_ref.name == "s3-credentials"
    pod = builders.build_job(r, 0, True)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"


RUNTIME = {"image": "reg.example/trainer:1", "allowedMethods": ["lora"], "maxNodes": 2, "maxGpusPerNode": 4, "maxTotalGpus": 6}


def test_each_s3_source_with_its_own_secret_gets_its_own_credentials() -> None:
    spec = minimal_spec(model={"uri": "s3://models-acct/llama/", "secretRef": {"name": "model-creds"}},
                        dataset={"uri": "s3://data-acct/train.jsonl", "format": "chat", "secretRef": {"name": "s3-creds"}})
    r = resolved(spec)
    assert isinstance(r, Resolved)
    env = {e["name"]: e for e in builders.pod_template(r, 0)["spec"]["containers"][0]["env"]}
    ref = lambda name: (env[name]["valueFrom"]["secretKeyRef"]["name"], env[name]["valueFrom"]["secretKeyRef"]["key"])  # noqa: E731
    # AWS_* from the output's Secret; the model's own under FINETUNE_MODEL_*; the dataset shares
    # the output's Secret, so it needs no names of its own
    assert ref(ct.ENV_AWS_ACCESS_KEY_ID) == ("s3-creds", ct.SECRET_KEY_AWS_ACCESS_KEY_ID)
    assert ref(ct.role_env("MODEL", ct.ENV_AWS_ACCESS_KEY_ID)) == ("model-creds", ct.SECRET_KEY_AWS_ACCESS_KEY_ID)
    assert ref(ct.role_env("MODEL", ct.ENV_AWS_SECRET_ACCESS_KEY)) == ("model-creds", ct.SECRET_KEY_AWS_SECRET_ACCESS_KEY)
    assert not any(name.startswith(("FINETUNE_DATASET_", "FINETUNE_OUTPUT_")) for name in env)
    assert all("value" not in e for name, e in env.items() if "AWS_" in name and "ENDPOINT" not in name), "credentials only as secretKeyRef"


def test_runtime_grace_period_and_workspace_size_reach_the_pods() -> None:
    r = resolved(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 1}),
                 {**RUNTIME, "terminationGracePeriodSeconds": 900, "workspaceSize": "200Gi"})
    assert isinstance(r, Resolved)
    pod = builders.build_job(r, 0, False)["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] == 900
    assert ctr["resources"]["requests"]["ephemeral-storage"] == ctr["resources"]["limits"]["ephemeral-storage"] == "200Gi"
    workspace = next(v for v in pod["volumes"] if v["name"] == c.WORKSPACE_VOLUME)
    assert workspace["emptyDir"] == {"sizeLimit": "200Gi"}
    plain = resolved(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 1}), RUNTIME)
    assert isinstance(plain, Resolved)
    pod = builders.build_job(plain, 0, False)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == c.TERMINATION_GRACE_SECONDS and "ephemeral-storage" not in str(pod)


def test_operator_wide_pull_secrets_serve_runtimes_that_name_none() -> None:
    import dataclasses

    config = dataclasses.replace(CONFIG, default_image_pull_secrets=("site-registry",))
    spec = parse_job(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 1}))
    plain = resolve(JobMeta("job", "ns", UID, 1), spec, parse_runtime(RUNTIME), True, config)
    own = resolve(JobMeta("job", "ns", UID, 1), spec, parse_runtime({**RUNTIME, "imagePullSecrets": [{"name": "regcred"}]}), True, config)
    assert isinstance(plain, Resolved) and isinstance(own, Resolved)
    assert builders.build_validator(plain)["spec"]["imagePullSecrets"] == [{"name": "site-registry"}]
    assert builders.build_job(plain, 0, False)["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "site-registry"}]
    assert builders.build_job(own, 0, False)["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]  # the runtime's win


def test_runtime_validator_settings_size_the_validation_pod() -> None:
    runtime = {**RUNTIME, "validator": {"cpu": "2", "memory": "12Gi", "deadlineSeconds": 7200}}
    r = resolved(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 1}), runtime)
    assert isinstance(r, Resolved)
    pod = builders.build_validator(r)["spec"]
    (ctr,) = pod["containers"]
    assert ctr["resources"] == {"requests": {"cpu": "2", "memory": "12Gi"}, "limits": {"memory": "12Gi"}}
    assert pod["activeDeadlineSeconds"] == 7200
    plain = resolved(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 1}), RUNTIME)
    assert isinstance(plain, Resolved)
    pod = builders.build_validator(plain)["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": c.VALIDATOR_MEMORY}
    assert pod["activeDeadlineSeconds"] == c.VALIDATOR_DEADLINE_SECONDS


def test_runtime_pull_secrets_reach_both_pods_and_its_tolerations_the_validator() -> None:
    """A private registry and all-tainted GPU nodes: the trainer and validation pods carry the
    runtime's imagePullSecrets; the validation pod tolerates the runtime's taints (else it never
    schedules) but has no node selector (it needs no GPU)."""
    runtime = {**RUNTIME, "imagePullSecrets": [{"name": "regcred"}], "nodeSelector": {"gpu": "a100"},
               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    r = resolved(minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 1}), runtime)
    assert isinstance(r, Resolved)
    trainer = builders.build_job(r, 0, False)["spec"]["template"]["spec"]
    validator = builders.build_validator(r)["spec"]
    assert trainer["imagePullSecrets"] == validator["imagePullSecrets"] == [{"name": "regcred"}]
    assert validator["tolerations"] == trainer["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert trainer["nodeSelector"] == {"gpu": "a100"} and "nodeSelector" not in validator


@pytest.mark.parametrize(
    ("spec", "runtime", "reason", "needle"),
    [
        (minimal_spec(runtimeRef={"name": "rt"}, method={"type": "full"}), RUNTIME, c.REASON_METHOD_NOT_ALLOWED, "spec.method.type"),
        (minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 3, "gpusPerNode": 1}), RUNTIME, c.REASON_RUNTIME_LIMIT_EXCEEDED, "spec.resources.nodes"),
        (minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 8}), RUNTIME, c.REASON_RUNTIME_LIMIT_EXCEEDED, "spec.resources.gpusPerNode"),
        (minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 2, "gpusPerNode": 4}), RUNTIME, c.REASON_RUNTIME_LIMIT_EXCEEDED, "maxTotalGpus"),
        (minimal_spec(runtimeRef={"name": "rt"}, image="other/image:2"), RUNTIME, c.REASON_IMAGE_OVERRIDE_NOT_ALLOWED, "spec.image"),
        ({**minimal_spec(runtimeRef={"name": "rt"}, resources={"nodes": 1, "gpusPerNode": 1}), "output": None}, RUNTIME, c.REASON_INVALID_SPEC, "spec.output"),
    ],
)
def test_resolve_problems(spec: dict[str, Any], runtime: dict[str, Any], reason: str, needle: str) -> None:
    spec = {k: v for k, v in spec.items() if v is not None}
    problem = resolved(spec, runtime)
    assert isinstance(problem, Problem)
    assert problem.reason == reason and needle in problem.message and not problem.waiting


def test_missing_runtime_waits() -> None:
    spec = parse_job(minimal_spec(runtimeRef={"name": "nope"}))
    problem = resolve(JobMeta("job", "ns", UID), spec, None, False, OperatorConfig())
    assert isinstance(problem, Problem) and problem.waiting and problem.reason == c.REASON_RUNTIME_NOT_FOUND


def test_image_override_allowed_by_runtime() -> None:
    r = resolved(minimal_spec(runtimeRef={"name": "rt"}, image="other/image:2", resources={"nodes": 1, "gpusPerNode": 1}), {**RUNTIME, "allowImageOverride": True})
    assert isinstance(r, Resolved) and r.image == "other/image:2"


def test_pvc_uris_mount_their_claims_in_trainer_and_validator_pods() -> None:
    """pvc://claim/path is read by the trainer at PVC_MOUNT_ROOT/claim/path (finetune_trainer.storage)."""
    from finetune_trainer.storage import parse_location

    spec = minimal_spec(
        model={"uri": "pvc://models/llama/7b"},
        dataset={"uri": "pvc://shared/data/train.jsonl", "format": "chat"},
        output={"uri": "pvc://shared/runs/one/"},
    )
    r = resolved(spec)
    assert isinstance(r, Resolved)
    assert builders.pvc_claims(r) == {"models": True, "shared": False}  # shared holds the output: read-write
    job = builders.build_job(r, 0, None)
    for pod_spec in (job["spec"]["template"]["spec"], builders.build_validator(r)["spec"]):
        vols = {v["name"]: v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
        claims = {v["persistentVolumeClaim"]["claimName"]: (name, v["persistentVolumeClaim"]["readOnly"]) for name, v in vols.items()}
        assert {k: ro for k, (_, ro) in claims.items()} == {"models": True, "shared": False}
        mounts = {m["name"]: m for m in pod_spec["containers"][0]["volumeMounts"]}
        for claim, (name, read_only) in claims.items():
            assert mounts[name]["mountPath"] == f"{ct.PVC_MOUNT_ROOT}/{claim}" and mounts[name]["readOnly"] is read_only
    # Where the trainer will look for each URI lies under the claim's mount.
    mount_paths = [m["mountPath"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]]
    for uri in (spec["model"]["uri"], spec["dataset"]["uri"], spec["output"]["uri"]):
        path = parse_location(uri).path
        assert any(path.startswith(mp + "/") for mp in mount_paths if mp.startswith(ct.PVC_MOUNT_ROOT)), (uri, path)


def test_no_claim_volumes_without_pvc_uris() -> None:
    r = resolved()
    assert isinstance(r, Resolved) and builders.pvc_claims(r) == {}
    assert not any("persistentVolumeClaim" in v for v in builders.build_job(r, 0, None)["spec"]["template"]["spec"]["volumes"])


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"model": {"uri": "/models/tiny"}}, "spec.model.uri"),
        ({"dataset": {"uri": "file:///data/train.jsonl", "format": "chat"}}, "spec.dataset.uri"),
        ({"output": {"uri": "/tmp/out"}}, "spec.output.uri"),
    ],
)
def test_local_paths_fail_at_once_naming_the_field(over: dict[str, Any], field: str) -> None:
    problem = resolved(minimal_spec(**over))
    assert isinstance(problem, Problem) and problem.reason == c.REASON_INVALID_SPEC and not problem.waiting
    assert problem.message == f"{field}: local paths only work with ftctl run --local; use pvc:// or s3://"


@pytest.mark.parametrize(
    ("cpu", "nproc", "want"),
    [("16", 8, 2), (4, 1, 4), ("1500m", 1, 1), ("2500m", 1, 2), ("900m", 1, 1), ("8000m", 4, 2), ("1", 8, 1), ("1.5", 1, None), (None, 1, None)],
)
def test_omp_threads_follow_the_cpu_request(cpu: str | int | None, nproc: int, want: int | None) -> None:
    assert builders.omp_threads(cpu, nproc) == want


def test_trainer_pods_get_omp_threads_from_a_millicore_request() -> None:
    r = resolved(minimal_spec(resources={"nodes": 2, "cpu": "2500m"}))
    assert isinstance(r, Resolved), r
    env = {e["name"]: e.get("value") for e in builders.pod_template(r, 0)["spec"]["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == "2"


def test_trainer_image_user_is_the_pods_run_as_user() -> None:
    """trainer_image/Dockerfile's user owns /workspace and the venv's writable paths; the pods the
    operator builds run as c.RUN_AS_USER. The two must be the same UID."""
    import re

    dockerfile = (pathlib.Path(__file__).resolve().parents[2] / "trainer_image" / "Dockerfile").read_text()
    uid = re.search(r"^ARG TRAINER_UID=(\d+)\s*$", dockerfile, re.M)
    assert uid, "trainer_image/Dockerfile must set ARG TRAINER_UID=<number>"
    assert re.search(r"^USER \$\{TRAINER_UID\}:\$\{TRAINER_UID\}\s*$", dockerfile, re.M)
    assert int(uid.group(1)) == c.RUN_AS_USER
    pod = builders.pod_template(resolved_example(next(iter(example_jobs()))), 0)["spec"]["securityContext"]
    assert pod["runAsUser"] == pod["runAsGroup"] == c.RUN_AS_USER
