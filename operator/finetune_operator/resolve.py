"""Merge a FineTuneJob with its ClusterFineTuneRuntime and check what the API server cannot.

Pure: no client, no clock. `resolve` returns either a `Resolved` (everything the builders need)
or a `Problem` (a constant reason and a readable message naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_trainer.config import OutputTarget, TrainerConfig

from finetune_operator import constants as c
from finetune_operator.api import (
    ClusterFineTuneRuntimeSpec,
    FineTuneJobSpec,
    Toleration,
    ValidatorSettings,
)


@dataclass(frozen=True)
class JobMeta:
    """Identity of the FineTuneJob (for names, owner references and labels)."""

    name: str
    namespace: str
    uid: str
    generation: int = 1


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings (from its command line / environment, passed in, never read here)."""

    default_image: str = c.DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    #: ClusterFineTuneRuntime of jobs without spec.runtimeRef; None: such jobs fail (RuntimeRequired).
    default_runtime: str | None = None
    #: imagePullSecrets of trainer and validation pods whose runtime names none (Secrets in each
    #: job's namespace).
    default_image_pull_secrets: tuple[str, ...] = ()
    #: Seconds past its deletion deadline after which a restarting attempt's pod is deleted with grace 0.
    unconfirmed_deletion_seconds: float = c.UNCONFIRMED_DELETION_SECONDS

    def runtime_name(self, spec: dict[str, Any]) -> str | None:
        """The runtime a FineTuneJob spec (as stored) resolves against."""
        ref = spec.get("runtimeRef")
        name = ref.get("name") if isinstance(ref, dict) else None
        return name if isinstance(name, str) and name else self.default_runtime


@dataclass(frozen=True)
class Resolved:
    meta: JobMeta
    spec: FineTuneJobSpec
    image: str
    nodes: int
    gpus_per_node: int
    cpu: str | int | None
    memory: str | int | None
    output: OutputTarget
    node_selector: dict[str, str]
    tolerations: tuple[Toleration, ...]
    priority_class_name: str | None
    service_account_name: str | None
    image_pull_policy: str
    trainer_config: TrainerConfig
    #: imagePullSecrets of the trainer and validation pods (the runtime's).
    image_pull_secrets: tuple[str, ...] = ()
    termination_grace_seconds: int = c.TERMINATION_GRACE_SECONDS
    #: Seconds an attempt may take to get every worker running; None: no deadline.
    startup_deadline_seconds: int | None = None
    #: ephemeral-storage of /workspace (request, limit and emptyDir sizeLimit); None: unbounded.
    workspace_size: str | None = None
    #: The ClusterFineTuneRuntime the job runs under (for messages).
    runtime_name: str = ""
    validator_cpu: str = c.VALIDATOR_CPU
    validator_memory: str = c.VALIDATOR_MEMORY
    validator_deadline_seconds: int = c.VALIDATOR_DEADLINE_SECONDS


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    #: True when the job waits (e.g. for its runtime to appear) instead of failing.
    waiting: bool = False


def is_local_path(uri: str) -> bool:
    """A path on the machine running the trainer: fine for `ftctl run --local`, never in a cluster
    (pods have a read-only root filesystem and see none of the user's files)."""
    return uri.startswith(("/", "file://"))


def resolve(
    meta: JobMeta,
    spec: FineTuneJobSpec,
    runtime: ClusterFineTuneRuntimeSpec | None,
    runtime_found: bool,
    config: OperatorConfig,
    *,
    local: bool = False,
) -> Resolved | Problem:
    """Every job runs under a runtime: its spec.runtimeRef, else the operator's default runtime.
    Without either the job fails (a job without a preset would escape every platform limit).

    `local`: for `ftctl run --local`, which resolves a job against a preset on the user's machine,
    where local paths are what they mean."""
    ref = spec.runtime_ref
    name = ref.name if ref is not None else config.default_runtime
    if name is None:
        return Problem(
            c.REASON_RUNTIME_REQUIRED,
            "spec.runtimeRef: required (this operator has no default runtime); name a ClusterFineTuneRuntime "
            "(kubectl get clusterfinetuneruntimes)",
        )
    if not runtime_found or runtime is None:
        field = "spec.runtimeRef.name" if ref is not None else "spec.runtimeRef (not set: the operator's default runtime)"
        return Problem(c.REASON_RUNTIME_NOT_FOUND, f"{field}: ClusterFineTuneRuntime {name!r} does not exist (waiting for it)", waiting=True)
    rt = runtime

    base_image = rt.image or config.default_image
    image = spec.image or base_image
    if spec.image is not None and spec.image != base_image and not rt.allow_image_override:
        return Problem(c.REASON_IMAGE_OVERRIDE_NOT_ALLOWED, f"spec.image: runtime {name!r} does not allow overriding its image {base_image!r}")

    nodes = spec.resources.nodes or rt.resources.nodes or c.DEFAULT_NODES
    gpus = next(g for g in (spec.resources.gpus_per_node, rt.resources.gpus_per_node, c.DEFAULT_GPUS_PER_NODE) if g is not None)
    cpu = spec.resources.cpu if spec.resources.cpu is not None else rt.resources.cpu
    memory = spec.resources.memory if spec.resources.memory is not None else rt.resources.memory

    if rt.allowed_methods is not None and spec.method.type not in rt.allowed_methods:
        return Problem(
            c.REASON_METHOD_NOT_ALLOWED,
            f"spec.method.type: {spec.method.type!r} is not allowed by runtime {name!r} (allowed: {', '.join(rt.allowed_methods)})",
        )
    if rt.max_nodes is not None and nodes > rt.max_nodes:
        return Problem(
            c.REASON_RUNTIME_LIMIT_EXCEEDED,
            f"spec.resources.nodes: {nodes} exceeds maxNodes {rt.max_nodes} of runtime {name!r}",
        )
    if rt.max_gpus_per_node is not None and gpus > rt.max_gpus_per_node:
        return Problem(
            c.REASON_RUNTIME_LIMIT_EXCEEDED,
            f"spec.resources.gpusPerNode: {gpus} exceeds maxGpusPerNode {rt.max_gpus_per_node} of runtime {name!r}",
        )
    if rt.max_total_gpus is not None and nodes * gpus > rt.max_total_gpus:
        return Problem(
            c.REASON_RUNTIME_LIMIT_EXCEEDED,
            f"spec.resources: {nodes} nodes x {gpus} GPUs = {nodes * gpus} exceeds maxTotalGpus {rt.max_total_gpus} of runtime {name!r}",
        )
    if spec.method.type == "qlora" and gpus == 0:
        return Problem(c.REASON_INVALID_SPEC, "spec.resources.gpusPerNode: method.type qlora needs at least 1 GPU per node")

    output = spec.output
    if output is None:
        if rt.default_output is None:
            return Problem(c.REASON_INVALID_SPEC, f"spec.output: not set and runtime {name!r} has no defaultOutput")
        base = rt.default_output
        output = base.model_copy(update={"uri": f"{base.uri.rstrip('/')}/{meta.namespace}/{meta.name}/"})

    for field, uri in (
        ("spec.model.uri", spec.model.uri),
        ("spec.dataset.uri", spec.dataset.uri),
        ("spec.output.uri" if spec.output is not None else f"defaultOutput.uri of runtime {name!r}", output.uri),
    ):
        if is_local_path(uri) and not local:
            return Problem(c.REASON_INVALID_SPEC, f"{field}: local paths only work with ftctl run --local; use pvc:// or s3://")

    v = rt.validator or ValidatorSettings()
    trainer_config = TrainerConfig(
        job_name=meta.name,
        namespace=meta.namespace,
        model=spec.model,
        dataset=spec.dataset,
        method=spec.method,
        hyperparameters=spec.hyperparameters,
        checkpoint=spec.checkpoint,
        output=output,
        metrics_port=c.contract.METRICS_PORT,
    )
    return Resolved(
        meta=meta,
        spec=spec,
        image=image,
        nodes=nodes,
        gpus_per_node=gpus,
        cpu=cpu,
        memory=memory,
        output=output,
        node_selector=dict(rt.node_selector or {}),
        tolerations=tuple(rt.tolerations or ()),
        priority_class_name=rt.priority_class_name,
        service_account_name=rt.service_account_name,
        image_pull_secrets=tuple(s.name for s in rt.image_pull_secrets) if rt.image_pull_secrets else config.default_image_pull_secrets,
        termination_grace_seconds=rt.termination_grace_period_seconds or c.TERMINATION_GRACE_SECONDS,
        startup_deadline_seconds=rt.startup_deadline_seconds,
        workspace_size=str(rt.workspace_size) if rt.workspace_size is not None else None,
        runtime_name=name,
        validator_cpu=str(v.cpu) if v.cpu is not None else c.VALIDATOR_CPU,
        validator_memory=str(v.memory) if v.memory is not None else c.VALIDATOR_MEMORY,
        validator_deadline_seconds=v.deadline_seconds or c.VALIDATOR_DEADLINE_SECONDS,
        image_pull_policy=config.image_pull_policy,
        trainer_config=trainer_config,
    )

