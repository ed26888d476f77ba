"""Malformed FineTuneJobs: each must be rejected by the API server (CRD schema or CEL) with a
message naming the field, and by `finetune_operator.api.parse_job` (the pydantic twin)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from tests.operator.helpers import minimal_spec


@dataclass(frozen=True)
class Case:
    id: str
    spec: dict[str, Any]
    #: What the API server's message must contain (the field path).
    field: str
    #: What parse_job's message must contain; None: nothing in the spec is wrong (e.g. the name).
    parse_field: str | None = ""
    name: str = "bad"


def _with(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(base or minimal_spec())
    node = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is _DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return spec


_DELETE = object()

CASES = [
    Case("model-uri-scheme", _with("model.uri", "ftp://host/model"), "spec.model.uri"),
    Case("dataset-uri-missing", _with("dataset.uri", _DELETE), "spec.dataset.uri"),
    Case("dataset-format-enum", _with("dataset.format", "csv"), "spec.dataset.format"),
    Case("labels-for-text", _with("dataset.labels", ["a", "b"]), "spec.dataset.labels", "dataset.labels is only allowed"),
    Case("augmentation-for-text", _with("dataset.augmentation", {"horizontalFlip": True}), "spec.dataset.augmentation", "dataset.augmentation is only allowed"),
    Case("random-crop-whole-image", _with("dataset", {"uri": "s3://bucket/img/", "format": "image-classification", "augmentation": {"randomCrop": 1.0}}), "spec.dataset.augmentation.randomCrop"),
    Case("dataset-validation-split-range", _with("dataset.validationSplit", 0.9), "spec.dataset.validationSplit"),
    Case("method-type-enum", _with("method", {"type": "prefix-tuning"}), "spec.method.type"),
    Case("full-with-lora-block", _with("method", {"type": "full", "lora": {"r": 8}}), "spec.method.lora", "method.lora is only allowed"),
    Case("qlora-with-deepspeed", _with("method", {"type": "qlora", "deepspeed": {"zeroStage": 2}}), "spec.method.deepspeed", "method.deepspeed is not supported"),
    Case("lora-r-zero", _with("method", {"type": "lora", "lora": {"r": 0}}), "spec.method.lora.r"),
    Case("lora-dropout-one", _with("method", {"type": "lora", "lora": {"dropout": 1.0}}), "spec.method.lora.dropout"),
    Case("zero-stage-4", _with("method", {"type": "full", "deepspeed": {"zeroStage": 4}}), "spec.method.deepspeed.zeroStage"),
    Case("learning-rate-zero", _with("hyperparameters.learningRate", 0), "spec.hyperparameters.learningRate"),
    Case("batch-size-string", _with("hyperparameters.batchSize", "eight"), "spec.hyperparameters.batchSize"),
    Case("nodes-zero", _with("resources.nodes", 0), "spec.resources.nodes"),
    Case("gpus-per-node-17", _with("resources.gpusPerNode", 17), "spec.resources.gpusPerNode"),
    Case("memory-not-a-quantity", _with("resources.memory", "lots"), "spec.resources.memory"),
    Case("output-uri-https", _with("output.uri", "https://example.com/out"), "spec.output.uri"),
    Case("qlora-without-gpu", _with("resources.gpusPerNode", 0, minimal_spec(method={"type": "qlora"})), "spec.resources.gpusPerNode", "qlora"),
    Case("checkpoint-after-max-steps", _with("checkpoint.everySteps", 500, minimal_spec(hyperparameters={"maxSteps": 100})), "spec.checkpoint.everySteps", "checkpoint.everySteps must not exceed"),
    Case("max-restarts-too-many", _with("maxRestarts", 21), "spec.maxRestarts"),
    Case("secret-name-invalid", _with("output.secretRef.name", "Bad_Name"), "spec.output.secretRef.name"),
    Case("queue-name-invalid", _with("queueName", "bad queue"), "spec.queueName"),
    Case("image-invalid", _with("image", "Not An Image"), "spec.image"),
    Case("unknown-field", _with("epochs", 3), "spec.epochs"),
    Case("name-too-long", minimal_spec(), "metadata.name", None, name="n" * 49),
    Case("name-starts-with-a-digit", minimal_spec(), "metadata.name", None, name="1job"),
    Case("name-with-a-dot", minimal_spec(), "metadata.name", None, name="my.job"),
    Case("cpu-negative-integer", _with("resources.cpu", -1), "spec.resources.cpu", "must not be negative"),
    Case("memory-negative-string", _with("resources.memory", "-1Gi"), "spec.resources.memory", "non-negative"),
]
