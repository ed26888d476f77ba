"""The API: FineTuneJob and ClusterFineTuneRuntime as pydantic models (the one source of truth).

`crdgen` turns these models, and the CEL rules attached to them with `cel(...)`, into the CRD YAML
in `crds/`; the tests fail when the committed YAML drifts. The spec reuses the trainer's
sub-models (ModelSource, DatasetSource, Method, Hyperparameters, CheckpointSettings,
OutputTarget) so the CRD, the rendered TrainerConfig and the trainer speak the same field names.
Every CEL rule has a pydantic twin here so `parse_job` rejects what the API server rejects.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from finetune_trainer.config import (
    CheckpointSettings,
    DatasetSource,
    Hyperparameters,
    Method,
    MethodType,
    ModelSource,
    OutputTarget,
    SecretRef,
    format_validation_error,
)
from pydantic import (
    AfterValidator,
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_operator import constants as c

__all__ = [
    "CheckpointSettings",
    "ClusterFineTuneRuntimeSpec",
    "Condition",
    "DatasetSource",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "Hyperparameters",
    "InvalidResource",
    "Method",
    "ModelSource",
    "OutputTarget",
    "RuntimeSnapshot",
    "SecretRef",
    "parse_job",
    "parse_runtime",
]

KUBE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
IMAGE_PATTERN = r"^[a-z0-9]([a-z0-9._\-/:]*[a-z0-9])?(:[\w][\w.\-]{0,127})?(@sha256:[a-f0-9]{64})?$"
QUANTITY_PATTERN = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One CEL validation rule as it appears under `x-kubernetes-validations`."""
    out: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def _check_quantity(v: str | int) -> str | int:
    if isinstance(v, str) and not re.fullmatch(QUANTITY_PATTERN, v):
        raise ValueError(f"{v!r} is not a non-negative Kubernetes quantity (e.g. 16, 500m, 200Gi)")
    if isinstance(v, int) and v < 0:
        raise ValueError(_QUANTITY_RULE["message"])
    return v


#: The schema pattern covers strings only; an integer quantity is checked by this rule.
_QUANTITY_RULE = cel("!string(self).startsWith('-')", "must not be negative", None, "FieldValueInvalid")


#: A Kubernetes resource quantity: an integer or a string such as "500m" or "200Gi".
Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-validations": [_QUANTITY_RULE],
        }
    ),
]
KubeName = Annotated[str, Field(min_length=1, max_length=253, pattern=KUBE_NAME_PATTERN)]
Image = Annotated[str, Field(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class RuntimeRef(_Model):
    """Names a ClusterFineTuneRuntime preset."""

    name: KubeName


class Resources(_Model):
    """Pods and GPUs. Fields left out come from the runtime preset, then from built-in defaults."""

    nodes: Annotated[int, Field(ge=1, le=64, description="Pods (one per node); completions = parallelism = nodes")] | None = None
    gpus_per_node: Annotated[int, Field(ge=0, le=16, description="nvidia.com/gpu limit per pod; 0 runs on CPU")] | None = None
    cpu: Quantity | None = Field(default=None, description="CPU request per pod")
    memory: Quantity | None = Field(default=None, description="Memory request and limit per pod")


_METHOD_RULES: list[Any] = [
    cel(
        "!(has(self.type) && self.type == 'full' && has(self.lora))",
        "method.lora is only allowed with method.type lora or qlora",
        ".lora",
        "FieldValueForbidden",
    ),
    cel(
        "!(has(self.type) && self.type == 'qlora' && has(self.deepspeed))",
        "method.deepspeed is not supported with method.type qlora",
        ".deepspeed",
        "FieldValueForbidden",
    ),
]

# Twins of DatasetSource's own validator (the trainer's config model): the API server refuses
# what the trainer would refuse later.
_DATASET_RULES: list[Any] = [
    cel(
        "!has(self.labels) || (has(self.format) && self.format in ['classification', 'image-classification'])",
        "dataset.labels is only allowed with dataset.format classification or image-classification",
        ".labels",
        "FieldValueForbidden",
    ),
    cel(
        "!has(self.augmentation) || (has(self.format) && self.format == 'image-classification')",
        "dataset.augmentation is only allowed with dataset.format image-classification",
        ".augmentation",
        "FieldValueForbidden",
    ),
]

_SPEC_RULES: list[Any] = [
    cel(
        "!(has(self.method) && has(self.method.type) && self.method.type == 'qlora' && has(self.resources) && has(self.resources.gpusPerNode) && self.resources.gpusPerNode == 0)",
        "resources.gpusPerNode must be at least 1 with method.type qlora (4-bit quantization needs a GPU)",
        ".resources.gpusPerNode",
        "FieldValueInvalid",
    ),
    cel(
        "!(has(self.hyperparameters) && has(self.hyperparameters.maxSteps) && has(self.checkpoint) && has(self.checkpoint.everySteps) && self.checkpoint.everySteps > self.hyperparameters.maxSteps)",
        "checkpoint.everySteps must not exceed hyperparameters.maxSteps",
        ".checkpoint.everySteps",
        "FieldValueInvalid",
    ),
]


class FineTuneJobSpec(_Model):
    """What to fine-tune, on what data, how, on how many nodes, and where to write the result."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

    runtime_ref: RuntimeRef | None = Field(
        default=None,
        description="ClusterFineTuneRuntime preset with image, resources and limits; the operator's default runtime when absent "
        "(a job without either fails: every job runs under a platform team's preset)",
    )
    model: ModelSource
    dataset: Annotated[DatasetSource, Field(json_schema_extra={"x-kubernetes-validations": _DATASET_RULES})]
    method: Annotated[Method, Field(json_schema_extra={"x-kubernetes-validations": _METHOD_RULES})] = Method()
    hyperparameters: Hyperparameters = Hyperparameters()
    resources: Resources = Resources()
    checkpoint: CheckpointSettings = CheckpointSettings()
    output: OutputTarget | None = Field(default=None, description="Where the adapter goes; the runtime's defaultOutput when absent")
    image: Image | None = Field(default=None, description="Trainer image override (only where the runtime allows it)")
    suspend: bool = Field(default=False, description="Hold the job (pods are removed, progress is kept); like batch/v1 Job.suspend")
    queue_name: Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)] | None = Field(
        default=None, description="Kueue LocalQueue; becomes the kueue.x-k8s.io/queue-name label on the Job"
    )
    max_restarts: Annotated[int, Field(ge=0, le=20)] = Field(
        default=c.DEFAULT_MAX_RESTARTS, description="Group restarts after a failed attempt (disruptions do not count)"
    )
    max_disruptions: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=c.DEFAULT_MAX_DISRUPTIONS,
        description="Worker pods taken away (evicted, preempted, stopped by SIGTERM) and replaced before the job fails; "
        "counted apart from maxRestarts",
    )
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=31_536_000)] | None = Field(
        default=None, description="Delete the FineTuneJob (and its children) this long after it finished"
    )

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        # Twins of _SPEC_RULES (the API server evaluates those; parse_job these).
        problems = []
        if self.method.type == "qlora" and self.resources.gpus_per_node == 0:
            problems.append(_SPEC_RULES[0]["message"])
        hp = self.hyperparameters
        # everySteps has no default here: the trainer picks one that fits the run's length.
        every = self.checkpoint.every_steps
        if hp.max_steps is not None and every is not None and every > hp.max_steps:
            problems.append(_SPEC_RULES[1]["message"])
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Toleration(_Model):
    """A pod toleration, as in core/v1."""

    key: Annotated[str, Field(max_length=316)] | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class RuntimeResources(_Model):
    """Defaults for jobs that leave resources out."""

    nodes: Annotated[int, Field(ge=1, le=64)] | None = None
    gpus_per_node: Annotated[int, Field(ge=0, le=16)] | None = None
    cpu: Quantity | None = None
    memory: Quantity | None = None


_RUNTIME_RULES: list[Any] = [
    cel(
        "!(has(self.maxNodes) && has(self.resources) && has(self.resources.nodes) && self.resources.nodes > self.maxNodes)",
        "resources.nodes must not exceed maxNodes",
        ".resources.nodes",
        "FieldValueInvalid",
    ),
    cel(
        "!(has(self.maxGpusPerNode) && has(self.resources) && has(self.resources.gpusPerNode) && self.resources.gpusPerNode > self.maxGpusPerNode)",
        "resources.gpusPerNode must not exceed maxGpusPerNode",
        ".resources.gpusPerNode",
        "FieldValueInvalid",
    ),
]


class ValidatorSettings(_Model):
    """The validation pod (CPU only; it reads the model's config, the dataset, and probes the output)."""

    cpu: Quantity | None = Field(default=None, description=f"CPU request ({c.VALIDATOR_CPU} when absent)")
    memory: Quantity | None = Field(
        default=None, description=f"Memory request and limit ({c.VALIDATOR_MEMORY} when absent); raise it for datasets of millions of rows"
    )
    deadline_seconds: Annotated[int, Field(ge=60, le=86_400)] | None = Field(
        default=None, description=f"activeDeadlineSeconds of the pod ({c.VALIDATOR_DEADLINE_SECONDS} when absent)"
    )


class ClusterFineTuneRuntimeSpec(_Model):
    """A preset owned by the platform team: image, resources, placement, limits, default output."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _RUNTIME_RULES})

    image: Image | None = Field(default=None, description="Trainer image for jobs using this runtime; the operator's default trainer image when absent")
    allow_image_override: bool = Field(default=False, description="Whether jobs may set spec.image")
    resources: RuntimeResources = RuntimeResources()
    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)] | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    allowed_methods: Annotated[list[MethodType], Field(min_length=1, max_length=3)] | None = Field(
        default=None, description="Methods jobs may use; all when absent"
    )
    max_nodes: Annotated[int, Field(ge=1, le=64)] | None = None
    max_gpus_per_node: Annotated[int, Field(ge=0, le=16)] | None = None
    max_total_gpus: Annotated[int, Field(ge=0, le=1024)] | None = None
    default_output: OutputTarget | None = Field(
        default=None,
        description="Output for jobs without spec.output; the job writes under <uri>/<namespace>/<name>/",
    )
    priority_class_name: KubeName | None = None
    service_account_name: KubeName | None = Field(default=None, description="ServiceAccount of the trainer pods")
    termination_grace_period_seconds: Annotated[int, Field(ge=30, le=86400)] | None = Field(
        default=None,
        description="Seconds a trainer pod gets after SIGTERM to write its checkpoint (120 when absent); raise it for large checkpoints",
    )
    startup_deadline_seconds: Annotated[int, Field(ge=60, le=604800)] | None = Field(
        default=None,
        description="Fail a job whose workers have not all started this long after the attempt began (a wrong image, a missing "
        "Secret, no node that fits), stopping its pods; absent: wait (e.g. for GPUs to free up)",
    )
    workspace_size: Quantity | None = Field(
        default=None,
        description="Scratch space of each pod (/workspace: model, dataset, checkpoints): an ephemeral-storage request and limit, "
        "and the emptyDir's sizeLimit. Absent: no request, no limit",
    )
    image_pull_secrets: Annotated[list[SecretRef], Field(max_length=16)] | None = Field(
        default=None, description="Secrets (in the job's namespace) for pulling the trainer image; set on the trainer and validation pods"
    )
    validator: ValidatorSettings | None = Field(default=None, description="Resources and deadline of the validation pod")

    @model_validator(mode="after")
    def _limits(self) -> ClusterFineTuneRuntimeSpec:
        r = self.resources
        if self.max_nodes is not None and r.nodes is not None and r.nodes > self.max_nodes:
            raise ValueError(_RUNTIME_RULES[0]["message"])
        if self.max_gpus_per_node is not None and r.gpus_per_node is not None and r.gpus_per_node > self.max_gpus_per_node:
            raise ValueError(_RUNTIME_RULES[1]["message"])
        return self


# --- Status ---------------------------------------------------------------------------------------
Phase = Literal[
    "Pending", "Validating", "Queued", "Initializing", "Running", "Uploading", "Succeeded", "Failed", "Suspended"
]
ConditionType = Literal["Validated", "Running", "Suspended", "Succeeded", "Failed"]
Timestamp = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]


class Condition(_Model):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=REASON_PATTERN)]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: Timestamp
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class Progress(_Model):
    """Read from the rank-0 trainer's progress endpoint."""

    step: Annotated[int, Field(ge=0)] | None = None
    total_steps: Annotated[int, Field(ge=0)] | None = None
    epoch: float | None = None
    percent: Annotated[float, Field(ge=0, le=100)] | None = None
    loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: Annotated[float, Field(ge=0, le=1)] | None = Field(default=None, description="Validation accuracy (classification)")
    eval_f1: Annotated[float, Field(ge=0, le=1)] | None = Field(default=None, description="Validation macro-F1 (classification, >2 labels)")
    eval_exact_match: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Fraction of greedy outputs equal to their targets on a validation sample (seq2seq)"
    )
    eval_rouge_l: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="Mean ROUGE-L F-measure of greedy outputs on a validation sample (seq2seq)"
    )
    tokens_per_second: float | None = None
    eta_seconds: Annotated[int, Field(ge=0)] | None = None
    eta: Annotated[str, Field(max_length=32)] | None = Field(default=None, description="etaSeconds for people (1h05m)")
    stage: Annotated[str, Field(max_length=32)] | None = Field(default=None, description="Trainer stage (training, uploading, ...)")
    trained_tokens: Annotated[int, Field(ge=0)] | None = None


class Workers(_Model):
    ready: Annotated[int, Field(ge=0)] = 0
    total: Annotated[int, Field(ge=0)] = 0


class OutputStatus(_Model):
    """From the rank-0 trainer's final summary (its termination message)."""

    adapter_uri: Annotated[str, Field(max_length=2048)] | None = None
    manifest_uri: Annotated[str, Field(max_length=2048)] | None = None
    sha256: Annotated[str, Field(max_length=64)] | None = None


class RuntimeSnapshot(_Model):
    """The ClusterFineTuneRuntime a job resolved against when it started. The job keeps it for its
    whole life: editing, renaming or deleting the runtime later changes nothing for it."""

    name: KubeName
    generation: Annotated[int, Field(ge=0)] | None = Field(default=None, description="metadata.generation of the runtime when copied")
    spec: ClusterFineTuneRuntimeSpec


class FineTuneJobStatus(_Model):
    phase: Phase | None = None
    message: Annotated[str, Field(max_length=32768)] | None = Field(default=None, description="Why the job is in its phase")
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    progress: Progress | None = None
    workers: Workers | None = None
    attempt: Annotated[int, Field(ge=0)] = Field(default=0, description="Current attempt (FINETUNE_ATTEMPT in the pods)")
    restarts: Annotated[int, Field(ge=0)] = Field(default=0, description="Group restarts after failed attempts")
    disruptions: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Worker pods taken away (evicted, preempted, SIGTERM) and replaced, over all attempts"
    )
    disrupted_pods: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=1024)] | None = Field(
        default=None, description="UIDs of the current attempt's pods already in disruptions (bookkeeping: each pod counted once)"
    )
    validation_retries: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Validation pods run again after a retryable failure (a source that did not answer)"
    )
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    gpu_seconds: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="GPU-seconds of every trainer pod that has ended, each counted once (never goes down); "
        "the time of pods still running is the operator's finetune_operator_running_gpu_seconds metric",
    )
    prior_gpu_seconds: Annotated[float, Field(ge=0)] | None = Field(default=None, description="GPU-seconds of earlier attempts")
    gpu_counted_pods: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=512)] | None = Field(
        default=None,
        description="UIDs of the current attempt's pods whose GPU time is already in gpuSeconds (bookkeeping: each pod counted once)",
    )
    trained_tokens: Annotated[int, Field(ge=0)] | None = None
    output: OutputStatus | None = None
    runtime: RuntimeSnapshot | None = Field(default=None, description="The runtime this job started under, used for its whole life")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def condition(self, type_: str) -> Condition | None:
        return next((x for x in self.conditions if x.type == type_), None)


class InvalidResource(ValueError):
    """A resource body the models reject; the message names each field (camelCase path)."""


def parse_job(spec: dict[str, Any]) -> FineTuneJobSpec:
    try:
        return FineTuneJobSpec.model_validate(spec)
    except ValidationError as err:
        raise InvalidResource(_prefix("spec", format_validation_error(err))) from None


def parse_runtime(spec: dict[str, Any]) -> ClusterFineTuneRuntimeSpec:
    try:
        return ClusterFineTuneRuntimeSpec.model_validate(spec)
    except ValidationError as err:
        raise InvalidResource(_prefix("spec", format_validation_error(err))) from None


def parse_status(status: dict[str, Any] | None) -> FineTuneJobStatus:
    """Previous status as written by this operator; unknown or broken parts are dropped."""
    data = dict(status or {})
    try:
        return FineTuneJobStatus.model_validate(data)
    except ValidationError:
        keep = {k: v for k, v in data.items() if k in ("phase", "attempt", "restarts", "startTime", "priorGpuSeconds", "gpuSeconds", "gpuCountedPods")}
        try:
            return FineTuneJobStatus.model_validate(keep)
        except ValidationError:
            return FineTuneJobStatus()


def _prefix(root: str, text: str) -> str:
    return "\n".join(f"{root}.{line}" if not line.startswith("<root>") else f"{root}{line[6:]}" for line in text.splitlines())
