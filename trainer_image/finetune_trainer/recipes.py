"""Fine-tuning methods. Each recipe builds the trainable model and saves the final weights.

Recipes share the `Recipe` Protocol, not a base class: `LoraRecipe` (lora, and qlora on a GPU)
and `FullRecipe` (every weight; usually under DeepSpeed ZeRO) are small and independent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from . import distributed
from .config import UNPACKED_FORMATS, TrainerConfig
from .distributed import DistEnv
from .errors import DataError, SetupError

CLASSIFICATION = "classification"
#: Written next to a classifier's adapter: its label names in class-id order (a JSON list).
LABELS_FILE = "labels.json"


#: The transformers Auto class of each task.
AUTO_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "classification": "AutoModelForSequenceClassification",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "image-classification": "AutoModelForImageClassification",
}
#: Tasks with a classification head over `Task.labels`.
CLASSIFIER_TASKS = frozenset({"classification", "image-classification"})


@dataclasses.dataclass(frozen=True)
class Task:
    """What the model must learn: a causal LM, a seq2seq LM, or a classifier (text or image) over `labels`."""

    kind: str  # a key of AUTO_CLASSES
    labels: tuple[str, ...] = ()

    @property
    def classifier(self) -> bool:
        return self.kind in CLASSIFIER_TASKS


def task_for(cfg: TrainerConfig, labels: list[str] | None) -> Task:
    fmt = cfg.dataset.format
    if fmt == CLASSIFICATION:
        return Task("classification", tuple(labels or ()))
    if fmt == "image-classification":
        return Task("image-classification", tuple(labels or ()))
    if fmt == "seq2seq":
        return Task("seq2seq")
    return Task("causal-lm")


def load_inputs(model_dir: pathlib.Path, cfg: TrainerConfig) -> Any:
    """What turns rows into model inputs: the tokenizer, or for images an `images.ImageInputs`."""
    if cfg.dataset.format == "image-classification":
        from .images import load_image_inputs

        return load_image_inputs(model_dir, cfg.model.trust_remote_code)
    return load_tokenizer(model_dir, cfg)


def decoder_start_token_id(model_dir: pathlib.Path, cfg: TrainerConfig) -> int | None:
    """An encoder-decoder model's decoder start token (T5: its pad id), from its config."""
    from transformers import AutoConfig

    mc = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=cfg.model.trust_remote_code)
    value = getattr(mc, "decoder_start_token_id", None)
    if value is None and hasattr(mc, "get_text_config"):
        value = getattr(mc.get_text_config(decoder=True), "decoder_start_token_id", None)
    return int(value) if value is not None else None


def train_dtype(cfg: TrainerConfig, env: DistEnv) -> torch.dtype:
    """The compute dtype: bf16 on GPUs that have it (precision auto), fp32 on CPU."""
    p = cfg.hyperparameters.precision
    if p == "fp16" and env.device.type == "cpu":
        raise SetupError("hyperparameters.precision: fp16 is not supported on CPU (use bf16 or fp32)")
    if p == "auto":
        if env.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[p]


def weights_dtype(cfg: TrainerConfig, env: DistEnv) -> torch.dtype:
    """The dtype the weights are loaded in; `precision` is explicit, never the checkpoint's.

    - LoRA/QLoRA: the frozen base in the compute dtype (peft keeps the adapters in fp32).
    - full without DeepSpeed: fp32, so AdamW updates fp32 master weights; the forward pass runs
      under autocast to the compute dtype.
    - under DeepSpeed: the compute dtype; DeepSpeed's optimizer keeps the fp32 master copy.
    """
    compute = train_dtype(cfg, env)
    if cfg.method.type == "full" and cfg.method.deepspeed is None:
        return torch.float32
    return compute


def _load_kwargs(cfg: TrainerConfig, env: DistEnv) -> dict[str, Any]:
    hp = cfg.hyperparameters
    kwargs: dict[str, Any] = {"dtype": weights_dtype(cfg, env)}
    if hp.attn_implementation is not None:
        kwargs["attn_implementation"] = hp.attn_implementation
    return kwargs


def _gradient_checkpointing(model: Any, cfg: TrainerConfig) -> None:
    if cfg.hyperparameters.gradient_checkpointing:
        # Non-reentrant checkpointing needs no inputs that require grad (frozen embeddings + LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False


def load_tokenizer(model_dir: pathlib.Path, cfg: TrainerConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=cfg.model.trust_remote_code)
    except Exception as err:
        raise DataError(f"model.uri: cannot load the tokenizer: {type(err).__name__}: {err}") from None
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise DataError("model.uri: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def _load_base(model_dir: pathlib.Path, cfg: TrainerConfig, task: Task, pad_token_id: int | None = None, **kwargs: Any) -> Any:
    """The base model; a classifier is told the tokenizer's pad id (`pad_token_id`, else read here).

    An image classifier gets a new head when its labels differ from the checkpoint's
    (`ignore_mismatched_sizes`), and its `id2label` names them.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        if task.kind in ("seq2seq", "image-classification"):
            auto = getattr(transformers, AUTO_CLASSES[task.kind])
            if task.kind == "image-classification":
                kwargs.update(
                    num_labels=len(task.labels),
                    id2label=dict(enumerate(task.labels)),
                    label2id={name: i for i, name in enumerate(task.labels)},
                    ignore_mismatched_sizes=True,
                )
            return auto.from_pretrained(str(model_dir), trust_remote_code=cfg.model.trust_remote_code, **kwargs)
        if task.kind == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir),
                num_labels=len(task.labels),
                id2label=dict(enumerate(task.labels)),
                label2id={name: i for i, name in enumerate(task.labels)},
                trust_remote_code=cfg.model.trust_remote_code,
                **kwargs,
            )
            if pad_token_id is None:
                pad_token_id = load_tokenizer(model_dir, cfg).pad_token_id
            _use_pad_token(model, pad_token_id)
            return model
        return AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=cfg.model.trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise DataError(f"model.uri: cannot load the model: {type(err).__name__}: {err}") from None


def _use_pad_token(model: Any, pad_token_id: int) -> None:
    """A classifier pools the last token that is not padding, found through `config.pad_token_id`.

    Llama, Mistral, Qwen... configs ship `pad_token_id: null` (batches of more than one then fail:
    "Cannot handle batch sizes > 1 if no padding token is defined"), and a config whose pad id is
    not the one batches are padded with would pool a padding position. Batches are padded with
    the tokenizer's pad id, so that is the model's.
    """
    current = getattr(model.config, "pad_token_id", None)
    if current == pad_token_id:
        return
    if current is not None:
        distributed.print0(
            f"model config pad_token_id {current} is not the tokenizer's pad token id {pad_token_id} that batches are padded with; "
            f"the classifier uses {pad_token_id}"
        )
    model.config.pad_token_id = pad_token_id


def base_model_reference(uri: str) -> tuple[str, str | None]:
    """What an adapter names as its base model: (name or URI, revision).

    `hf://org/name@rev` -> ("org/name", "rev"), which `from_pretrained` resolves on the Hub;
    `file:///abs` -> "/abs"; any other URI (s3://, pvc://) or local path as given: never the
    pod-local directory the model was downloaded to.
    """
    if uri.startswith("hf://"):
        name, _, revision = uri[len("hf://") :].partition("@")
        return name, revision or None
    if uri.startswith("file://"):
        return uri[len("file://") :], None
    return uri, None


#: LoRA targets for model types whose layers are mostly convolutions (no useful "all-linear").
CONV_LORA_TARGETS = {"resnet": ["convolution"]}
#: The head of an image classifier, trained fully and saved with the adapter.
IMAGE_HEAD_MODULES = ["classifier"]


def lora_target_modules(configured: list[str] | None, model_type: str | None = None) -> list[str] | str:
    """The configured modules, else every linear projection (peft's "all-linear").

    peft's per-architecture defaults are narrow (only q_proj and v_proj for Llama); "all-linear"
    adapts every Linear layer except the output layer: `lm_head` of a causal LM, and the
    `score`/`classifier` head of a classifier, which trains fully through `modules_to_save`.
    Convolutional models (ResNet) get LoRA on their convolutions instead (`CONV_LORA_TARGETS`).
    """
    if configured:
        return list(configured)
    if model_type in CONV_LORA_TARGETS:
        return list(CONV_LORA_TARGETS[model_type])
    return "all-linear"


def adapted_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct names (last component) of the modules that received a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, LoraLayer)})


class Recipe(Protocol):
    """What the training loop needs from a fine-tuning method."""

    name: str

    def build(self, model_dir: pathlib.Path, task: Task, pad_token_id: int | None = None) -> torch.nn.Module:
        """The model to train, with only the intended parameters requiring gradients.

        `pad_token_id`: the id batches are padded with (the tokenizer's); a classifier needs it
        to find each row's last real token. When None it is read from the model's tokenizer.
        """
        ...

    def save_final(self, model: torch.nn.Module, tokenizer: Any, dest: pathlib.Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Write the final weights (+ tokenizer) to `dest` (a local directory)."""
        ...

    @property
    def output_prefix(self) -> str:
        """Where the weights go under the job's output ("adapter/" or "model/")."""
        ...

    @property
    def saves_trainable_only(self) -> bool:
        """Whether `save_final` needs only the trainable parameters (LoRA adapters + saved heads)."""
        ...


@dataclasses.dataclass
class LoraRecipe:
    """LoRA adapters via peft; `quantized` loads the base in 4 bits (QLoRA, CUDA only)."""

    cfg: TrainerConfig
    env: DistEnv
    quantized: bool = False
    name: str = "lora"
    target_modules: list[str] | str = dataclasses.field(default_factory=list)
    task: Task | None = None

    @property
    def output_prefix(self) -> str:
        return "adapter/"

    @property
    def saves_trainable_only(self) -> bool:
        return True

    def build(self, model_dir: pathlib.Path, task: Task, pad_token_id: int | None = None) -> torch.nn.Module:
        from peft import LoraConfig, TaskType, get_peft_model

        self.task = task
        kwargs = _load_kwargs(self.cfg, self.env)
        if self.quantized:
            kwargs.update(_qlora_load_kwargs(self.env))
        model = _load_base(model_dir, self.cfg, task, pad_token_id, **kwargs)
        if self.quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model,
                use_gradient_checkpointing=self.cfg.hyperparameters.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        else:
            _gradient_checkpointing(model, self.cfg)
        settings = self.cfg.method.lora_settings()
        task_types = {"classification": TaskType.SEQ_CLS, "seq2seq": TaskType.SEQ_2_SEQ_LM, "causal-lm": TaskType.CAUSAL_LM}
        image = task.kind == "image-classification"
        targets = lora_target_modules(settings.target_modules, getattr(model.config, "model_type", None))
        lora = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            # an image classifier has no peft task type: its new head trains fully, saved with the adapter
            target_modules=_without_head(model, targets) if image else targets,
            task_type=task_types.get(task.kind),
            modules_to_save=[*IMAGE_HEAD_MODULES, *_batch_norm_names(model)] if image else None,
        )
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as err:
            raise SetupError(f"method.lora.targetModules: {err}") from None
        self.target_modules = adapted_module_names(peft_model)  # what the manifest records
        return peft_model

    def save_final(self, model: torch.nn.Module, tokenizer: Any, dest: pathlib.Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        """adapter_model.safetensors + adapter_config.json (+ labels.json for a classifier) + tokenizer.

        adapter_config.json names the model's source as its base (`org/name` + `revision` for
        hf://, else the URI as configured), not the pod-local copy it was trained from.
        """
        # save_embedding_layers: the vocabulary is never resized here, and peft's "auto" would
        # look the base up (on the Hub, by the name below) to compare vocabulary sizes
        kwargs: dict[str, Any] = {"safe_serialization": True, "save_embedding_layers": False}
        if state_dict is not None:
            kwargs["state_dict"] = state_dict
        with _naming_base_model(model, *base_model_reference(self.cfg.model.uri)):
            model.save_pretrained(str(dest), **kwargs)  # type: ignore[operator]
        tokenizer.save_pretrained(str(dest))
        if self.task is not None and self.task.classifier:
            (dest / LABELS_FILE).write_text(json.dumps(list(self.task.labels)) + "\n")


def _batch_norm_names(model: Any) -> list[str]:
    """The names of a model's batch-norm layers (ResNet's `normalization`): saved whole with the
    adapter, so their running statistics, which move while training, travel with it."""
    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, kinds)})


def _without_head(model: Any, targets: list[str] | str) -> list[str] | str:
    """Image classifiers: "all-linear" as explicit names minus the head (peft finds no output
    layer to leave out on them, and a module cannot be both adapted and saved whole)."""
    if targets != "all-linear":
        return targets
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(name == h or name.startswith(h + ".") for h in IMAGE_HEAD_MODULES)
    }
    if not names:
        raise SetupError("method.lora.targetModules: the model has no linear layer outside its head; name the modules to adapt")
    return sorted(names)


@contextlib.contextmanager
def _naming_base_model(model: Any, name: str, revision: str | None) -> Iterator[None]:
    """While saving, name `name`@`revision` as the base model instead of the local download
    directory: in peft's configs (adapter_config.json) and in the base model's `name_or_path`
    and config (the model card's `base_model` and its `base_model:adapter:` tag)."""
    configs = list(model.peft_config.values())
    base = model.get_base_model()
    saved_configs = [(c.base_model_name_or_path, c.revision) for c in configs]
    saved_names = (getattr(base, "name_or_path", None), base.config.name_or_path)
    for c in configs:
        c.base_model_name_or_path, c.revision = name, revision
    base.name_or_path = name
    base.config.name_or_path = name
    try:
        yield
    finally:
        for c, (old_name, old_revision) in zip(configs, saved_configs, strict=True):
            c.base_model_name_or_path, c.revision = old_name, old_revision
        base.name_or_path, base.config.name_or_path = saved_names


def _qlora_load_kwargs(env: DistEnv) -> dict[str, Any]:
    if env.device.type != "cuda":
        raise SetupError("method.type qlora needs a CUDA GPU (4-bit bitsandbytes kernels); this node has none. Use method.type lora on CPU.")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise SetupError("method.type qlora needs the bitsandbytes package in the trainer image") from None
    return {
        "quantization_config": BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        "device_map": {"": env.local_rank},
    }


@dataclasses.dataclass
class FullRecipe:
    """Every weight trains; the final model is saved as consolidated safetensors."""

    cfg: TrainerConfig
    env: DistEnv
    name: str = "full"

    @property
    def output_prefix(self) -> str:
        return "model/"

    @property
    def saves_trainable_only(self) -> bool:
        return False

    def build(self, model_dir: pathlib.Path, task: Task, pad_token_id: int | None = None) -> torch.nn.Module:
        model = _load_base(model_dir, self.cfg, task, pad_token_id, **_load_kwargs(self.cfg, self.env))
        _gradient_checkpointing(model, self.cfg)
        model.train()
        return model  # type: ignore[no-any-return]

    def save_final(self, model: torch.nn.Module, tokenizer: Any, dest: pathlib.Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        model.save_pretrained(str(dest), state_dict=state_dict, safe_serialization=True)  # type: ignore[operator]
        tokenizer.save_pretrained(str(dest))


def preflight(cfg: TrainerConfig, env: DistEnv) -> None:
    """Refuse, before any download, what this machine cannot run (qlora without CUDA, fp16 on CPU)
    or what the format cannot do (packing seq2seq or images)."""
    train_dtype(cfg, env)
    if cfg.hyperparameters.packing and cfg.dataset.format in UNPACKED_FORMATS:
        raise SetupError(f"hyperparameters.packing: format {cfg.dataset.format} always trains unpacked; leave packing unset or false")
    if cfg.method.type == "qlora":
        _qlora_load_kwargs(env)


def recipe_for(cfg: TrainerConfig, env: DistEnv) -> Recipe:
    kind = cfg.method.type
    if kind == "lora":
        return LoraRecipe(cfg, env)
    if kind == "qlora":
        return LoraRecipe(cfg, env, quantized=True, name="qlora")
    return FullRecipe(cfg, env)
