"""TrainerConfig: the trainer's only input, and the shared vocabulary of the FineTuneJob spec.

The operator renders a TrainerConfig (JSON, camelCase keys) into the job's ConfigMap; a person can
also write one by hand for a local run (`python -m finetune_trainer train --config cfg.yaml`).
The sub-models (ModelSource, DatasetSource, Method, Hyperparameters, ...) are reused by the
operator's FineTuneJob spec model, so the CRD and the trainer speak the same field names.

Only pydantic and the standard library are imported here: the operator imports this module.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Annotated, Any, Final, Literal

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

CONFIG_API_VERSION: Final = "finetune.dev/trainer-v1"

#: URI schemes accepted for models, datasets and outputs.
MODEL_URI_PATTERN = r"^(hf://[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file:///.+|/.+)$"
DATASET_URI_PATTERN = r"^(hf://datasets/[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+|https?://[^\s]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+|file:///.+|/.+)$"
OUTPUT_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file:///.+|/.+)$"


class _Model(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class SecretRef(_Model):
    """A Secret in the job's own namespace. Only its name travels; values reach pods as env."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]


class ModelSource(_Model):
    """Where the base model comes from."""

    uri: Annotated[str, Field(pattern=MODEL_URI_PATTERN, description="hf://org/name[@rev], s3://bucket/prefix, pvc://claim/path or a local path")]
    secret_ref: SecretRef | None = Field(default=None, description="Secret with HF_TOKEN or AWS_* keys")
    trust_remote_code: bool = False
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = Field(
        default=None, description="S3-compatible endpoint for an s3:// model; else output.endpoint, else AWS_ENDPOINT_URL"
    )
    download: Literal["Auto", "PerNode", "Once"] = Field(
        default="Auto",
        description=(
            "Multi-node jobs: Once downloads the model on the first node only and sends it to the others over the job's "
            "network (one request to the source per job); PerNode downloads it on every node. Auto: Once for hf:// "
            "(the Hub rate-limits and bills per download), PerNode for s3:// (an object store serves the nodes in "
            "parallel). pvc:// is mounted, never downloaded"
        ),
    )

    def downloads_once(self, nodes: int) -> bool:
        """Whether a job of `nodes` nodes downloads this model on one node and shares it."""
        if nodes < 2 or not self.uri.startswith(("hf://", "s3://")):
            return False
        return self.download == "Once" or (self.download == "Auto" and self.uri.startswith("hf://"))


DatasetFormat = Literal["text", "prompt-completion", "chat", "classification", "seq2seq", "image-classification"]

#: The fields each format reads from a row; `dataset.columns` may map any of them to another column.
FORMAT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "chat": ("messages",),
    "classification": ("text", "label"),
    "seq2seq": ("input", "target"),
    "image-classification": ("image", "label"),
}
#: Formats with a label per row (a classification head).
LABELLED_FORMATS: Final = frozenset({"classification", "image-classification"})
#: Formats that never pack examples into blocks; `packing: true` with them is refused at start.
UNPACKED_FORMATS: Final = frozenset({"seq2seq", "image-classification"})

ColumnName = Annotated[str, Field(min_length=1, max_length=256)]


class ImageAugmentation(_Model):
    """Random changes to each training image each time it is loaded (validation images never)."""

    horizontal_flip: bool = Field(default=False, description="Mirror the image left-right with probability 0.5")
    random_crop: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        default=None,
        description="Crop to a random area between this fraction of the image and all of it (aspect ratio kept, random position) "
        "before the image processor resizes it",
    )


class DatasetSource(_Model):
    """Training data: JSON Lines, Parquet or CSV files in one of six formats."""

    uri: Annotated[str, Field(pattern=DATASET_URI_PATTERN, description="s3://, https://, hf://datasets/..., pvc:// or a local path")]
    format: DatasetFormat = "text"
    columns: dict[str, ColumnName] | None = Field(
        default=None,
        max_length=8,
        description="The data's own column names for the format's fields, e.g. {text: review, label: sentiment}; "
        "unmapped fields keep their names",
    )
    labels: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        max_length=10_000,
        description="classification / image-classification: the label set in class-id order; a row with another label is an error. "
        "When absent, the labels found in the data (integers keep their value, names are sorted)",
    )
    validation_split: Annotated[float, Field(ge=0.0, le=0.5)] = 0.05
    augmentation: ImageAugmentation | None = Field(default=None, description="image-classification: training-time augmentation (off when absent)")
    secret_ref: SecretRef | None = None
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = Field(
        default=None, description="S3-compatible endpoint for an s3:// dataset; else output.endpoint, else AWS_ENDPOINT_URL"
    )

    @model_validator(mode="after")
    def _columns_and_labels_fit_format(self) -> DatasetSource:
        fields = FORMAT_FIELDS[self.format]
        unknown = sorted(set(self.columns or {}) - set(fields))
        if unknown:
            raise ValueError(f"columns: {', '.join(unknown)} is not a field of format {self.format} (its fields: {', '.join(fields)})")
        if self.augmentation is not None and self.format != "image-classification":
            raise ValueError(f"dataset.augmentation is only allowed with dataset.format image-classification, not {self.format}")
        if self.labels is not None:
            if self.format not in LABELLED_FORMATS:
                raise ValueError(f"dataset.labels is only allowed with dataset.format classification or image-classification, not {self.format}")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must not repeat a name")
        return self

    def column(self, field: str) -> str:
        """The data's column that holds `field`."""
        return (self.columns or {}).get(field, field)

    def resolved_columns(self) -> dict[str, str]:
        """Every field of the format and the column it is read from."""
        return {f: self.column(f) for f in FORMAT_FIELDS[self.format]}


class LoraSettings(_Model):
    r: Annotated[int, Field(ge=1, le=1024)] = 16
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=64, description="Module names; every linear layer except the output head (peft 'all-linear') when absent"
    )


class DeepSpeedSettings(_Model):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False


MethodType = Literal["lora", "qlora", "full"]


class Method(_Model):
    type: MethodType = "lora"
    lora: LoraSettings | None = None
    deepspeed: DeepSpeedSettings | None = None

    @model_validator(mode="after")
    def _blocks_match_method(self) -> Method:
        if self.type == "full" and self.lora is not None:
            raise ValueError("method.lora is only allowed with method.type lora or qlora")
        if self.type == "qlora" and self.deepspeed is not None:
            raise ValueError("method.deepspeed is not supported with method.type qlora")
        return self

    def lora_settings(self) -> LoraSettings:
        return self.lora or LoraSettings()


Precision = Literal["auto", "bf16", "fp16", "fp32"]


class Hyperparameters(_Model):
    epochs: Annotated[float, Field(gt=0, le=1000)] = 1
    max_steps: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Overrides epochs")
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None, description="Peak learning rate; when absent 2e-4 for lora/qlora and 2e-5 for full"
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 8
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    max_seq_length: Annotated[int, Field(ge=8, le=1_048_576)] = 512
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.03
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    seed: Annotated[int, Field(ge=0)] = 42
    packing: bool | None = Field(
        default=None,
        description="Bin-pack whole examples into maxSeqLength blocks, each document attending only to itself; "
        "when absent, on for model families where that isolation is verified and off otherwise",
    )
    precision: Precision = "auto"
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in backward: less memory, ~30% more compute")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] | None = Field(
        default=None, description="Attention kernel; when absent transformers' default for the model (sdpa)"
    )
    eval_every_steps: Annotated[int, Field(ge=1)] | None = None
    logging_steps: Annotated[int, Field(ge=1)] = 1


DEFAULT_LEARNING_RATE: Final = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
DEFAULT_CHECKPOINT_EVERY_STEPS: Final = 200


class CheckpointSettings(_Model):
    every_steps: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Steps between checkpoints; when absent 200, or a fifth of a shorter run"
    )
    keep: Annotated[int, Field(ge=1, le=100)] = 3


class OutputTarget(_Model):
    uri: Annotated[str, Field(pattern=OUTPUT_URI_PATTERN, description="s3://bucket/prefix/, pvc://claim/path or a local path")]
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, ...); AWS when absent"
    )
    secret_ref: SecretRef | None = None


class TrainerConfig(_Model):
    """Everything one training run needs. Rendered by the operator; versioned."""

    api_version: Literal["finetune.dev/trainer-v1"] = CONFIG_API_VERSION
    job_name: Annotated[str, Field(min_length=1, max_length=253)] = "local"
    namespace: Annotated[str, Field(min_length=1, max_length=63)] = "default"
    model: ModelSource
    dataset: DatasetSource
    method: Method = Method()
    hyperparameters: Hyperparameters = Hyperparameters()
    checkpoint: CheckpointSettings = CheckpointSettings()
    output: OutputTarget
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9400

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)

    def learning_rate(self) -> float:
        """The configured learning rate, else the method's default (full fine-tuning needs ~10x less)."""
        return self.hyperparameters.learning_rate or DEFAULT_LEARNING_RATE[self.method.type]

    def checkpoint_every(self, total_steps: int) -> int:
        """The configured interval, else 200 steps, or about five checkpoints in a shorter run."""
        if self.checkpoint.every_steps is not None:
            return self.checkpoint.every_steps
        return min(DEFAULT_CHECKPOINT_EVERY_STEPS, max(1, -(-total_steps // 5)))


class ConfigError(ValueError):
    """A TrainerConfig that cannot be used; the message lists every problem, one per line."""


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the field by its camelCase path."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not re.fullmatch(r"function-after\[.*\]", str(p)))
        lines.append(f"{loc or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any]) -> TrainerConfig:
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | pathlib.Path) -> TrainerConfig:
    """Read a TrainerConfig from a JSON or YAML file; every problem reported at once."""
    p = pathlib.Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror}") from None
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(f"config file {p} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return parse_config(data)
