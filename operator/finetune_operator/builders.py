"""Desired state: pure functions from a resolved FineTuneJob to child manifests.

No client, no clock, no randomness: the same input gives byte-identical output, which the table
and golden-YAML tests in tests/operator/ pin down. Children have deterministic names, carry an
owner reference to the FineTuneJob (garbage collection removes them with it) and the labels in
`finetune_trainer.contract`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from finetune_operator import constants as c
from finetune_operator.resolve import JobMeta, Resolved

ct = c.contract
Manifest = dict[str, Any]


# --- names ------------------------------------------------------------------------------------
def configmap_name(job: str) -> str:
    return job + c.CONFIGMAP_SUFFIX


def service_name(job: str) -> str:
    return job + c.SERVICE_SUFFIX


def validator_name(job: str) -> str:
    return job + c.VALIDATOR_SUFFIX


def workload_name(job: str) -> str:
    """The Kueue Workload made for a FineTuneJob with a queue: the job's own name (Kueue names the
    Workloads it makes itself job-<name>-<hash>, so the two never meet)."""
    return job


def master_addr(meta: JobMeta) -> str:
    """DNS name of the rank-0 pod: <job>-0.<job>-workers.<ns>.svc (Indexed Job hostname + subdomain)."""
    return f"{meta.name}-0.{service_name(meta.name)}.{meta.namespace}.svc"


# --- shared pieces ------------------------------------------------------------------------------
def owner_reference(meta: JobMeta, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": ct.API_VERSION,
        "kind": ct.KIND_JOB,
        "name": meta.name,
        "uid": meta.uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def labels(meta: JobMeta, component: str | None = None) -> dict[str, str]:
    out = {ct.LABEL_MANAGED_BY: ct.MANAGED_BY, ct.LABEL_JOB_NAME: meta.name}
    if meta.uid:
        out[ct.LABEL_JOB_UID] = meta.uid
    if component:
        out[ct.LABEL_COMPONENT] = component
    return out


def _metadata(meta: JobMeta, name: str, component: str | None = None, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": meta.namespace,
        "labels": {**labels(meta, component), **(extra_labels or {})},
        "ownerReferences": [owner_reference(meta)],
    }


def config_json(r: Resolved) -> str:
    return str(r.trainer_config.to_json())


def config_hash(r: Resolved) -> str:
    return hashlib.sha256(config_json(r).encode()).hexdigest()[:16]


def _secret_env(name: str, secret: str, key: str, optional: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def credential_env(r: Resolved) -> list[dict[str, Any]]:
    """Credentials, only ever as secretKeyRef from Secrets in the job's own namespace.

    AWS_* come from the output's Secret (else the first s3:// source's); a source with a Secret of
    its own also gets FINETUNE_<ROLE>_AWS_* from it; HF_TOKEN from the model's Secret (else the
    dataset's) and is optional, so public models need no token.
    """
    spec = r.spec
    env: list[dict[str, Any]] = []
    aws_secret = None
    if r.output.secret_ref is not None:
        aws_secret = r.output.secret_ref.name
    else:
        for src in (spec.model, spec.dataset):
            if src.uri.startswith("s3://") and src.secret_ref is not None:
                aws_secret = src.secret_ref.name
                break
    if aws_secret:
        env += [
            _secret_env(ct.ENV_AWS_ACCESS_KEY_ID, aws_secret, ct.SECRET_KEY_AWS_ACCESS_KEY_ID, False),
            _secret_env(ct.ENV_AWS_SECRET_ACCESS_KEY, aws_secret, ct.SECRET_KEY_AWS_SECRET_ACCESS_KEY, False),
            _secret_env(ct.ENV_AWS_SESSION_TOKEN, aws_secret, "AWS_SESSION_TOKEN", True),
        ]
    # An s3:// source whose Secret differs from the one above also gets it under its own names, so
    # a model in one account and the output in another are each read or written with their own
    # credentials (the trainer prefers a source's own; the others use AWS_*).
    sources: tuple[tuple[str, str, str | None], ...] = tuple(
        (role, src.uri, src.secret_ref.name if src.secret_ref is not None else None)
        for role, src in (("MODEL", spec.model), ("DATASET", spec.dataset), ("OUTPUT", r.output))
    )
    for role, uri, name in sources:
        if uri.startswith("s3://") and name is not None and name != aws_secret:
            env += [
                _secret_env(ct.role_env(role, ct.ENV_AWS_ACCESS_KEY_ID), name, ct.SECRET_KEY_AWS_ACCESS_KEY_ID, False),
                _secret_env(ct.role_env(role, ct.ENV_AWS_SECRET_ACCESS_KEY), name, ct.SECRET_KEY_AWS_SECRET_ACCESS_KEY, False),
                _secret_env(ct.role_env(role, ct.ENV_AWS_SESSION_TOKEN), name, "AWS_SESSION_TOKEN", True),
            ]
    hf_secret = next((s.secret_ref.name for s in (spec.model, spec.dataset) if s.secret_ref is not None and s.uri.startswith("hf://")), None)
    if hf_secret:
        env.append(_secret_env(ct.ENV_HF_TOKEN, hf_secret, ct.SECRET_KEY_HF_TOKEN, True))
    if r.output.endpoint:
        env.append({"name": ct.ENV_S3_ENDPOINT, "value": r.output.endpoint})
    return env


def _field_env(name: str, path: str) -> dict[str, Any]:
    """An env var from the pod's own fields, written as the API server stores it (apiVersion
    defaulted): Kueue compares a Job's containers with its Workload's exactly."""
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def _common_env(r: Resolved, attempt: int | None) -> list[dict[str, Any]]:
    """`attempt` None: FINETUNE_ATTEMPT comes from the pod's attempt label, so the containers of
    every attempt are the same (a Kueue Workload made once stays in sync with each attempt's Job)."""
    env = [
        {"name": ct.ENV_CONFIG_PATH, "value": ct.CONFIG_PATH},
        {"name": ct.ENV_JOB_NAME, "value": r.meta.name},
        {"name": ct.ENV_JOB_NAMESPACE, "value": r.meta.namespace},
        {"name": ct.ENV_METRICS_PORT, "value": str(ct.METRICS_PORT)},
        {"name": ct.ENV_ATTEMPT, "value": str(attempt)}
        if attempt is not None
        else _field_env(ct.ENV_ATTEMPT, f"metadata.labels['{ct.LABEL_ATTEMPT}']"),
        # Read-only root filesystem: every cache goes to the writable workspace emptyDir.
        {"name": "HOME", "value": ct.WORK_DIR},
        {"name": "XDG_CACHE_HOME", "value": ct.CACHE_DIR},
        {"name": "HF_HOME", "value": ct.CACHE_DIR + "/huggingface"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": ct.CACHE_DIR + "/torch_extensions"},
        {"name": "TRITON_CACHE_DIR", "value": ct.CACHE_DIR + "/triton"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": ct.ENV_TERMINATION_MESSAGE_PATH, "value": ct.TERMINATION_MESSAGE_PATH},
    ]
    return env + credential_env(r)


def _security_context_pod() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": c.RUN_AS_USER,
        "runAsGroup": c.RUN_AS_USER,
        "fsGroup": c.RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _security_context_container() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _volumes(r: Resolved, shm: bool) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [
        {
            "name": c.CONFIG_VOLUME,
            "configMap": {"name": configmap_name(r.meta.name), "items": [{"key": ct.CONFIG_FILE_NAME, "path": ct.CONFIG_FILE_NAME}]},
        },
        {"name": c.WORKSPACE_VOLUME, "emptyDir": {"sizeLimit": r.workspace_size} if r.workspace_size else {}},
        {"name": c.TMP_VOLUME, "emptyDir": {}},
    ]
    if shm:
        vols.append({"name": c.SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
    for i, (claim, read_only) in enumerate(pvc_claims(r).items()):
        vols.append({"name": f"{c.PVC_VOLUME_PREFIX}{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
    return vols


def pvc_claims(r: Resolved) -> dict[str, bool]:
    """The PersistentVolumeClaims that pvc:// URIs name, sorted, each mapped to read-only.

    The trainer reads pvc://claim/path at contract.PVC_MOUNT_ROOT/claim/path. A claim only read
    from (model, dataset) is mounted read-only; the output's claim read-write.
    """
    claims: dict[str, bool] = {}
    for uri, writes in ((r.spec.model.uri, False), (r.spec.dataset.uri, False), (r.output.uri, True)):
        if uri.startswith("pvc://"):
            claim = uri[len("pvc://") :].split("/", 1)[0]
            claims[claim] = claims.get(claim, True) and not writes
    return dict(sorted(claims.items()))


def _mounts(r: Resolved, shm: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": c.CONFIG_VOLUME, "mountPath": ct.CONFIG_MOUNT_DIR, "readOnly": True},
        {"name": c.WORKSPACE_VOLUME, "mountPath": ct.WORK_DIR},
        {"name": c.TMP_VOLUME, "mountPath": ct.TMP_DIR},
    ]
    if shm:
        mounts.append({"name": c.SHM_VOLUME, "mountPath": ct.SHM_DIR})
    for i, (claim, read_only) in enumerate(pvc_claims(r).items()):
        mounts.append({"name": f"{c.PVC_VOLUME_PREFIX}{i}", "mountPath": f"{ct.PVC_MOUNT_ROOT}/{claim}", "readOnly": read_only})
    return mounts


# --- children -------------------------------------------------------------------------------------
def build_configmap(r: Resolved) -> Manifest:
    """<job>-config: the rendered TrainerConfig (no credentials: Secrets are named, never read)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            **_metadata(r.meta, configmap_name(r.meta.name)),
            "annotations": {c.ANNOTATION_CONFIG_HASH: config_hash(r)},
        },
        "data": {ct.CONFIG_FILE_NAME: config_json(r)},
    }


def build_service(r: Resolved) -> Manifest:
    """<job>-workers: headless, so <job>-<index>.<job>-workers resolves before pods are Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(r.meta, service_name(r.meta.name), ct.COMPONENT_TRAINER),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(r.meta, ct.COMPONENT_TRAINER),
            "ports": [
                {"name": ct.PORT_NAME_RENDEZVOUS, "port": ct.RENDEZVOUS_PORT, "targetPort": ct.RENDEZVOUS_PORT, "protocol": "TCP"},
                {"name": ct.PORT_NAME_METRICS, "port": ct.METRICS_PORT, "targetPort": ct.METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }


def _resources(r: Resolved, gpus: int) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if r.cpu is not None:
        requests["cpu"] = str(r.cpu)
    if r.memory is not None:
        requests["memory"] = str(r.memory)
        limits["memory"] = str(r.memory)
    if gpus > 0:
        # requested as the API server would default it (a limit without a request), so the
        # stored container equals this one (Kueue compares them)
        requests[c.GPU_RESOURCE] = limits[c.GPU_RESOURCE] = str(gpus)
    if r.workspace_size:
        # Scheduled onto a node with room for the downloads and checkpoints, and evicted (a
        # disruption) rather than filling the node's disk.
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = r.workspace_size
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def omp_threads(cpu: str | int | None, nproc: int) -> int | None:
    """Threads per training process for a CPU request of ``cpu`` (``"16"``, ``"1500m"``, 4):
    the whole cores of the request shared by ``nproc`` processes, at least 1; None when the
    request is not a plain core count or millicores (then torch's default stands)."""
    text = str(cpu) if cpu is not None else ""
    if text.isdigit():
        cores = int(text)
    elif text.endswith("m") and text[:-1].isdigit():
        cores = int(text[:-1]) // 1000
    else:
        return None
    return max(cores // max(nproc, 1), 1)


def trainer_command(r: Resolved) -> list[str]:
    """The trainer image's launcher: torchrun in-process (it reads --nnodes, --nproc-per-node,
    --node-rank and --master-* from the PET_* env), exiting with the contract exit code the
    workers recorded (plain torchrun would turn a config error into exit 1, a retry)."""
    return ["python", "-m", "finetune_trainer.launch", "-m", "finetune_trainer", "train", "--config", ct.CONFIG_PATH]


def pod_template(r: Resolved, attempt: int) -> Manifest:
    meta = r.meta
    nproc = max(r.gpus_per_node, 1)
    env = [
        {"name": ct.ENV_NNODES, "value": str(r.nodes)},
        {"name": ct.ENV_NPROC_PER_NODE, "value": str(nproc)},
        _field_env(ct.ENV_NODE_RANK, f"metadata.annotations['{ct.ANNOTATION_JOB_COMPLETION_INDEX}']"),
        {"name": ct.ENV_MASTER_ADDR, "value": master_addr(meta)},
        {"name": ct.ENV_MASTER_PORT, "value": str(ct.RENDEZVOUS_PORT)},
        {"name": ct.ENV_MASTER_ADDR_COMPAT, "value": master_addr(meta)},
        {"name": ct.ENV_MASTER_PORT_COMPAT, "value": str(ct.RENDEZVOUS_PORT)},
        *_common_env(r, None),
    ]
    threads = omp_threads(r.cpu, nproc)
    if threads is not None:
        # torchrun leaves OMP_NUM_THREADS unset with one process per node (FIELD-NOTES): torch
        # would then start one thread per core of the machine, not of the pod's CPU request.
        env.append({"name": "OMP_NUM_THREADS", "value": str(threads)})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": service_name(meta.name),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": r.termination_grace_seconds,
        "securityContext": _security_context_pod(),
        "containers": [
            {
                "name": c.TRAINER_CONTAINER,
                "image": r.image,
                "imagePullPolicy": r.image_pull_policy,
                "command": trainer_command(r),
                "env": env,
                "ports": [
                    {"name": ct.PORT_NAME_RENDEZVOUS, "containerPort": ct.RENDEZVOUS_PORT, "protocol": "TCP"},
                    {"name": ct.PORT_NAME_METRICS, "containerPort": ct.METRICS_PORT, "protocol": "TCP"},
                ],
                "resources": _resources(r, r.gpus_per_node),
                "volumeMounts": _mounts(r, shm=True),
                "securityContext": _security_context_container(),
                "terminationMessagePath": ct.TERMINATION_MESSAGE_PATH,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": _volumes(r, shm=True),
    }
    if r.node_selector:
        spec["nodeSelector"] = dict(sorted(r.node_selector.items()))
    if r.tolerations:
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in r.tolerations]
    if r.priority_class_name:
        spec["priorityClassName"] = r.priority_class_name
    if r.service_account_name:
        spec["serviceAccountName"] = r.service_account_name
    if r.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in r.image_pull_secrets]
    return {
        "metadata": {
            "labels": {**labels(meta, ct.COMPONENT_TRAINER), ct.LABEL_ATTEMPT: str(attempt)},
            "annotations": {c.ANNOTATION_CONFIG_HASH: config_hash(r)},
        },
        "spec": spec,
    }


def template_hash(template: Manifest) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def pod_failure_policy(queued: bool = False) -> dict[str, Any]:
    """Disruptions (eviction, preemption, SIGTERM honoured after a checkpoint) don't fail the
    attempt: the Job controller recreates that pod. Config/data errors fail the Job at once.

    `queued` (Kueue): any other failure is ignored too, so the Job itself never fails. Kueue
    finishes the Workload of a failed Job for good, and the group restart (the operator deletes
    the Job on the first failed worker and makes the next attempt's) keeps the admission only while
    the Workload is not finished."""
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": c.TRAINER_CONTAINER, "operator": "In", "values": [ct.EXIT_PREEMPTED]}},
        {"action": "FailJob", "onExitCodes": {"containerName": c.TRAINER_CONTAINER, "operator": "In", "values": list(ct.NON_RETRYABLE_EXIT_CODES)}},
    ]
    if queued:
        rules.append({"action": "Ignore", "onExitCodes": {"containerName": c.TRAINER_CONTAINER, "operator": "NotIn", "values": [0]}})
    return {"rules": rules}


def build_job(r: Resolved, attempt: int, suspend: bool | None, own_workload: bool = True) -> Manifest:
    """The Indexed Job <job>: one pod per node, completions = parallelism = nodes.

    `suspend=None` leaves Job.spec.suspend out of the applied configuration, so a field owned by
    Kueue (which unsuspends admitted Jobs) is not taken back. With a queue the Job names the
    job's own Workload (build_workload), which every attempt's Job takes over in turn
    (`own_workload` False: only the queue label, and Kueue makes a Workload for each Job).
    """
    own_workload = own_workload and bool(r.spec.queue_name)
    template = pod_template(r, attempt)
    extra = {ct.LABEL_ATTEMPT: str(attempt)}
    if r.spec.queue_name:
        extra[ct.LABEL_KUEUE_QUEUE] = r.spec.queue_name
    if own_workload:
        extra[ct.LABEL_KUEUE_PREBUILT_WORKLOAD] = workload_name(r.meta.name)
    metadata = _metadata(r.meta, r.meta.name, ct.COMPONENT_TRAINER, extra)
    metadata["annotations"] = {c.ANNOTATION_TEMPLATE_HASH: template_hash(template)}
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": r.nodes,
        "parallelism": r.nodes,
        # A failed worker fails the attempt; the operator restarts the whole group.
        "backoffLimit": 0,
        "podFailurePolicy": pod_failure_policy(queued=own_workload),
        # Replace a disrupted pod only once it is gone, so ranks never overlap.
        "podReplacementPolicy": "Failed",
        "manualSelector": False,
        "template": template,
    }
    if suspend is not None:
        spec["suspend"] = suspend
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def build_workload(r: Resolved, active: bool) -> Manifest:
    """The Kueue Workload of a job with a queue, made before its first Job and kept for the job's
    life: each attempt's Job names it (kueue.x-k8s.io/prebuilt-workload-name), so a group restart
    keeps the admission instead of queueing again, and `active` (false while spec.suspend is
    true) is how a suspend gives the quota back (Kueue then suspends the Job itself).

    Owned by the FineTuneJob but not as its controller: Kueue makes each Job the controller.
    The pod set is the training pod template; Kueue compares its containers with the Job's.
    """
    template = pod_template(r, 0)
    # Kueue resets the Job's pod template labels and annotations to these whenever it stops the
    # Job (evicted, deactivated): the operator's, less the attempt (the pods' Job tells it then).
    metadata = {"labels": labels(r.meta, ct.COMPONENT_TRAINER), "annotations": template["metadata"]["annotations"]}
    spec: dict[str, Any] = {
        "queueName": r.spec.queue_name,
        "active": active,
        "podSets": [{"name": "main", "count": r.nodes, "template": {"metadata": metadata, "spec": template["spec"]}}],
    }
    if r.priority_class_name:
        # The queue's order and preemption follow the pods' PriorityClass, as for a Workload Kueue
        # makes itself. Kueue wants its value too (`spec.priority`): the executor reads it from the
        # PriorityClass when it sends the Workload.
        spec["priorityClassRef"] = {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": r.priority_class_name}
    return {
        "apiVersion": c.KUEUE_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(r.meta.name),
            "namespace": r.meta.namespace,
            "labels": labels(r.meta, ct.COMPONENT_TRAINER),
            "ownerReferences": [owner_reference(r.meta, controller=False)],
        },
        "spec": spec,
    }


def build_validator(r: Resolved, tries: int = 0) -> Manifest:
    """<job>-validate: a small CPU-only pod running `python -m finetune_trainer validate`; it checks
    that model and dataset are reachable and the dataset parses, before any GPU is requested.
    `tries`: validation pods run before this one (labelled as its attempt, so that the failure of
    each is counted once)."""
    meta = r.meta
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **_metadata(meta, validator_name(meta.name), ct.COMPONENT_VALIDATOR, {ct.LABEL_ATTEMPT: str(tries)} if tries else None),
            "annotations": {c.ANNOTATION_CONFIG_HASH: config_hash(r)},
        },
        "spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "activeDeadlineSeconds": r.validator_deadline_seconds,
            "securityContext": _security_context_pod(),
            "containers": [
                {
                    "name": c.VALIDATOR_CONTAINER,
                    "image": r.image,
                    "imagePullPolicy": r.image_pull_policy,
                    "command": ["python", "-m", "finetune_trainer", "validate", "--config", ct.CONFIG_PATH],
                    "env": _common_env(r, 0),
                    "resources": {
                        "requests": {"cpu": r.validator_cpu, "memory": r.validator_memory},
                        "limits": {"memory": r.validator_memory},
                    },
                    "volumeMounts": _mounts(r, shm=False),
                    "securityContext": _security_context_container(),
                    "terminationMessagePath": ct.TERMINATION_MESSAGE_PATH,
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
            "volumes": _volumes(r, shm=False),
            **({"serviceAccountName": r.service_account_name} if r.service_account_name else {}),
            **({"imagePullSecrets": [{"name": name} for name in r.image_pull_secrets]} if r.image_pull_secrets else {}),
            # The runtime's tolerations (they only permit): on a cluster whose nodes are all
            # tainted the validation pod could otherwise never schedule. No node selector: it
            # needs no GPU, so it may run anywhere the taints allow.
            **({"tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in r.tolerations]} if r.tolerations else {}),
        },
    }


def build_children(r: Resolved, attempt: int, suspend: bool | None, own_workload: bool = True) -> list[Manifest]:
    """Everything the training step needs, in apply order (with a queue, the Workload first)."""
    own_workload = own_workload and bool(r.spec.queue_name)
    workload = [build_workload(r, active=not r.spec.suspend)] if own_workload else []
    return [build_configmap(r), build_service(r), *workload, build_job(r, attempt, suspend, own_workload)]
