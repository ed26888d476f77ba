"""Fine-tuning methods. Each recipe builds the trainable model and saves the final weights.

Recipes share the `Recipe` Protocol, not a base class: `LoraRecipe` (lora, and qlora on a GPU)
and `FullRecipe` (every weight; usually under DeepSpeed ZeRO) are small and independent.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Protocol

import torch

from .config import TrainerConfig
from .distributed import DistEnv
from .errors import DataError, SetupError

CLASSIFICATION = "classification"


@dataclasses.dataclass(frozen=True)
class Task:
    """What the model must learn: a causal LM or a classifier over `labels`."""

    kind: str  # "causal-lm" | "classification"
    labels: tuple[str, ...] = ()


def task_for(cfg: TrainerConfig, labels: list[str] | None) -> Task:
    if cfg.dataset.format == CLASSIFICATION:
        return Task("classification", tuple(labels or ()))
    return Task("causal-lm")


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


def _load_base(model_dir: pathlib.Path, cfg: TrainerConfig, task: Task, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        if task.kind == "classification":
            return AutoModelForSequenceClassification.from_pretrained(
                str(model_dir),
                num_labels=len(task.labels),
                id2label=dict(enumerate(task.labels)),
                label2id={name: i for i, name in enumerate(task.labels)},
                trust_remote_code=cfg.model.trust_remote_code,
                **kwargs,
            )
        return AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=cfg.model.trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise DataError(f"model.uri: cannot load the model: {type(err).__name__}: {err}") from None


def lora_target_modules(model: torch.nn.Module, configured: list[str] | None) -> list[str] | str:
    """The configured modules, else peft's known list for this architecture, else every Linear."""
    if configured:
        return list(configured)
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN
    except ImportError:  # pragma: no cover - older/newer peft layouts
        KNOWN = {}
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in KNOWN:
        return list(KNOWN[model_type])
    return "all-linear"


class Recipe(Protocol):
    """What the training loop needs from a fine-tuning method."""

    name: str

    def build(self, model_dir: pathlib.Path, task: Task) -> torch.nn.Module:
        """The model to train, with only the intended parameters requiring gradients."""
        ...

    def save_final(self, model: torch.nn.Module, tokenizer: Any, dest: pathlib.Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        """Write the final weights (+ tokenizer) to `dest` (a local directory)."""
        ...

    @property
    def output_prefix(self) -> str:
        """Where the weights go under the job's output ("adapter/" or "model/")."""
        ...


@dataclasses.dataclass
class LoraRecipe:
    """LoRA adapters via peft; `quantized` loads the base in 4 bits (QLoRA, CUDA only)."""

    cfg: TrainerConfig
    env: DistEnv
    quantized: bool = False
    name: str = "lora"
    target_modules: list[str] | str = dataclasses.field(default_factory=list)

    @property
    def output_prefix(self) -> str:
        return "adapter/"

    def build(self, model_dir: pathlib.Path, task: Task) -> torch.nn.Module:
        from peft import LoraConfig, TaskType, get_peft_model

        kwargs: dict[str, Any] = {}
        if self.quantized:
            kwargs = _qlora_load_kwargs(self.env)
        model = _load_base(model_dir, self.cfg, task, **kwargs)
        if self.quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)  # type: ignore[no-untyped-call]
        settings = self.cfg.method.lora_settings()
        self.target_modules = lora_target_modules(model, settings.target_modules)
        lora = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=self.target_modules,
            task_type=TaskType.SEQ_CLS if task.kind == "classification" else TaskType.CAUSAL_LM,
        )
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as err:
            raise SetupError(f"method.lora.targetModules: {err}") from None
        return peft_model

    def save_final(self, model: torch.nn.Module, tokenizer: Any, dest: pathlib.Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        kwargs: dict[str, Any] = {"safe_serialization": True}
        if state_dict is not None:
            kwargs["state_dict"] = state_dict
        model.save_pretrained(str(dest), **kwargs)  # type: ignore[operator]
        tokenizer.save_pretrained(str(dest))


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

    def build(self, model_dir: pathlib.Path, task: Task) -> torch.nn.Module:
        model = _load_base(model_dir, self.cfg, task)
        model.train()
        return model  # type: ignore[no-any-return]

    def save_final(self, model: torch.nn.Module, tokenizer: Any, dest: pathlib.Path, state_dict: dict[str, torch.Tensor] | None) -> None:
        model.save_pretrained(str(dest), state_dict=state_dict, safe_serialization=True)  # type: ignore[operator]
        tokenizer.save_pretrained(str(dest))


def preflight(cfg: TrainerConfig, env: DistEnv) -> None:
    """Refuse, before any download, what this machine cannot run (qlora without CUDA, fp16 on CPU)."""
    train_dtype(cfg, env)
    if cfg.method.type == "qlora":
        _qlora_load_kwargs(env)


def recipe_for(cfg: TrainerConfig, env: DistEnv) -> Recipe:
    kind = cfg.method.type
    if kind == "lora":
        return LoraRecipe(cfg, env)
    if kind == "qlora":
        return LoraRecipe(cfg, env, quantized=True, name="qlora")
    return FullRecipe(cfg, env)
