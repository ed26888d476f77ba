"""How gradients are computed and applied: plain torch (DDP when distributed) or DeepSpeed ZeRO.

Both engines follow the `Engine` Protocol; the training loop does not know which one it drives.
DeepSpeed is used when the config has a `method.deepspeed` block (full fine-tuning or LoRA).
"""

from __future__ import annotations

import contextlib
import math
import pathlib
from typing import Any, Protocol

import torch

from .config import TrainerConfig
from .data import IGNORE_INDEX
from .distributed import DistEnv

TRAINABLE_FILE = "trainable.pt"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
DEEPSPEED_TAG = "deepspeed"
MAX_GRAD_NORM = 1.0


def lr_lambda(total_steps: int, warmup_ratio: float) -> Any:
    """Linear warm-up, then linear decay to zero."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return f


class Engine(Protocol):
    def forward_backward(self, batch: dict[str, torch.Tensor], *, scale: float, last_micro: bool) -> torch.Tensor:
        """Run one micro-batch and back-propagate `scale * (sum of its losses)`.

        Returns the unscaled loss sum as a detached 0-d tensor on the device (no host sync).
        """
        ...

    def step(self) -> None:
        """Apply the accumulated gradients (optimizer + scheduler) and clear them."""
        ...

    def learning_rate(self) -> float: ...

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward pass without gradients (evaluation); `labels` in the batch are ignored."""
        ...

    def generate(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding of an encoder-decoder batch (its `input_ids` and `attention_mask`):
        the generated ids, decoder start token first. Every rank calls it the same number of times."""
        ...

    def save(self, directory: pathlib.Path) -> None:
        """Write optimizer, scheduler and trainable weights (every rank calls this)."""
        ...

    def load(self, directory: pathlib.Path) -> None: ...

    def module(self) -> torch.nn.Module:
        """The model without DDP/DeepSpeed wrappers."""
        ...

    def consolidated_state_dict(self, *, trainable_only: bool) -> dict[str, torch.Tensor] | None:
        """Weights on rank 0 gathered from ZeRO-3 partitions (None elsewhere, and without ZeRO-3).

        `trainable_only` gathers just the parameters that train (LoRA adapters, saved heads).
        """
        ...


def count_targets(labels: torch.Tensor, *, shifted: bool = True) -> int:
    """How many losses a batch contributes: trained next-token targets, or examples (classifiers).

    `shifted`: causal-LM labels, whose first position is never a target; seq2seq labels are
    aligned with the decoder's logits (`shifted=False`), every non-ignored one is a target.
    """
    if labels.dim() == 1:
        return int(labels.numel())
    return int(((labels[:, 1:] if shifted else labels) != IGNORE_INDEX).sum())


def shifted_labels(batch: dict[str, torch.Tensor]) -> bool:
    """Whether a collated batch's labels are causal-LM labels (the loss shifts them) rather than
    seq2seq labels aligned with `decoder_input_ids`."""
    return "decoder_input_ids" not in batch


def batch_targets(batch: dict[str, torch.Tensor]) -> int:
    """The targets of a collated batch (see `count_targets`)."""
    return count_targets(batch["labels"], shifted=shifted_labels(batch))


#: Rows of logits handled at once by the cross-entropy (fp32 work space: chunk x vocabulary).
LOSS_CHUNK_TOKENS = 2048


class _CrossEntropySum(torch.autograd.Function):
    """Sum of token cross-entropies over `logits` [N, V] (any float dtype), computed in fp32.

    Forward keeps only the per-row log-sum-exp; backward writes softmax - onehot straight into
    one gradient tensor, chunk by chunk. Compared with `F.cross_entropy` this never materialises
    a full-size log-softmax, its zero-filled NLL gradient, nor (for bf16) an fp32 copy of the
    logits: ~2x less loss time on CPU and far less memory for large vocabularies.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        safe = torch.where(valid, targets, 0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], LOSS_CHUNK_TOKENS):
            chunk = logits[i : i + LOSS_CHUNK_TOKENS].float()
            rows = torch.logsumexp(chunk, dim=-1)
            lse[i : i + LOSS_CHUNK_TOKENS] = rows
            picked = chunk.gather(1, safe[i : i + LOSS_CHUNK_TOKENS, None]).squeeze(1)
            total += ((rows - picked) * valid[i : i + LOSS_CHUNK_TOKENS]).sum()
        ctx.save_for_backward(logits, safe, valid, lse)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, safe, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        fp32 = logits.dtype == torch.float32
        for i in range(0, logits.shape[0], LOSS_CHUNK_TOKENS):
            j = i + LOSS_CHUNK_TOKENS
            # softmax - onehot, in place (fp32: straight in the gradient tensor)
            g = torch.sub(logits[i:j], lse[i:j, None], out=grad[i:j]) if fp32 else logits[i:j].float() - lse[i:j, None]
            g.exp_()
            g.scatter_add_(1, safe[i:j, None], torch.full_like(lse[i:j, None], -1.0))
            g.mul_(valid[i:j, None] * grad_total)
            if not fp32:
                grad[i:j] = g
        return grad, None


def loss_sum(logits: torch.Tensor, labels: torch.Tensor, *, shifted: bool = True) -> torch.Tensor:
    """The SUM of per-token (causal LM, seq2seq) or per-example (classifiers) cross-entropy, in fp32.

    Causal LM: the labels are shifted (padded with IGNORE_INDEX at the end), never the logits,
    and `_CrossEntropySum` works on the logits in place. Seq2seq (`shifted=False`): the labels
    are already aligned with the decoder's logits.
    """
    if labels.dim() == 1:  # classification
        return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    targets = (torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX) if shifted else labels).reshape(-1)
    total: torch.Tensor = _CrossEntropySum.apply(logits.reshape(-1, logits.size(-1)), targets)  # type: ignore[no-untyped-call]
    return total


def _model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """The model's keyword arguments: the batch without labels and token counts; token models
    also get `use_cache=False` (vision models take no cache)."""
    out: dict[str, Any] = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("labels", "token_mask")}
    if "input_ids" in batch:
        out["use_cache"] = False
    return out


def _generate(module: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, max_new_tokens: int, *, synced: bool) -> torch.Tensor:
    was_training = module.training
    module.eval()
    try:
        out: torch.Tensor = module.generate(  # type: ignore[operator]
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            synced_gpus=synced,
        )
    finally:
        module.train(was_training)
    return out.cpu()


class TorchEngine:
    """AdamW + linear schedule on the trainable parameters; DDP across ranks.

    The parameters keep the dtype they were loaded in (fp32 for full fine-tuning: the optimizer
    then updates fp32 master weights) and the forward pass runs under autocast to `dtype`.
    """

    def __init__(self, cfg: TrainerConfig, model: torch.nn.Module, env: DistEnv, total_steps: int, dtype: torch.dtype) -> None:
        hp = cfg.hyperparameters
        self.env = env
        self.dtype = dtype
        model.to(env.device)
        self._module = model
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.wrapped: torch.nn.Module = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        else:
            self.wrapped = model
        params = [p for p in model.parameters() if p.requires_grad]
        fused = env.device.type == "cuda" and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=hp.weight_decay, fused=fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(total_steps, hp.warmup_ratio))
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.dtype)

    def forward_backward(self, batch: dict[str, torch.Tensor], *, scale: float, last_micro: bool) -> torch.Tensor:
        labels = batch["labels"].to(self.env.device, non_blocking=True)
        sync = contextlib.nullcontext() if (last_micro or not self.env.distributed) else self.wrapped.no_sync()  # type: ignore[operator]
        with sync:
            with self._autocast():
                logits = self.wrapped(**_model_inputs(batch, self.env.device)).logits
            total = loss_sum(logits, labels, shifted=shifted_labels(batch))
            scaled: torch.Tensor = total * scale
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()  # type: ignore[no-untyped-call]
            else:
                scaled.backward()  # type: ignore[no-untyped-call]
        return total.detach()

    def step(self) -> None:
        params = [p for p in self._module.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._autocast():
            return self._module(**_model_inputs(batch, self.env.device)).logits  # type: ignore[no-any-return]

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int) -> torch.Tensor:
        with self._autocast():
            return _generate(self._module, batch, self.env.device, max_new_tokens, synced=False)

    def save(self, directory: pathlib.Path) -> None:
        if self.env.is_main:
            trainable = {n: p.detach().cpu() for n, p in self._module.named_parameters() if p.requires_grad}
            trainable.update(_persistent_buffers(self._module))  # e.g. batch-norm running statistics
            torch.save(trainable, directory / TRAINABLE_FILE)
            torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)
            torch.save(self.scheduler.state_dict(), directory / SCHEDULER_FILE)

    def load(self, directory: pathlib.Path) -> None:
        trainable = torch.load(directory / TRAINABLE_FILE, map_location=self.env.device, weights_only=True)
        params: dict[str, torch.Tensor] = dict(self._module.named_parameters())
        params.update(_persistent_buffers(self._module))
        missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
        if missing:
            raise RuntimeError(f"checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]}); was it written by another method?")
        with torch.no_grad():
            for name, tensor in trainable.items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=self.env.device, weights_only=True))
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=True))

    def module(self) -> torch.nn.Module:
        return self._module

    def consolidated_state_dict(self, *, trainable_only: bool) -> dict[str, torch.Tensor] | None:
        return None  # every rank holds the full weights; save_pretrained reads them directly


def _persistent_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a state dict holds (batch-norm running statistics; not rotary caches)."""
    persistent = set(module.state_dict(keep_vars=True))
    return {n: b for n, b in module.named_buffers() if n in persistent}


def deepspeed_config(cfg: TrainerConfig, env: DistEnv, dtype: torch.dtype) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from the TrainerConfig (launcher details stay in config)."""
    hp = cfg.hyperparameters
    ds = cfg.method.deepspeed
    assert ds is not None
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": env.device.type == "cuda"}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "train_batch_size": hp.batch_size * hp.gradient_accumulation_steps * env.world_size,
        "gradient_clipping": MAX_GRAD_NORM,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.learning_rate(),
                "weight_decay": hp.weight_decay,
                # On CPU torch's AdamW needs no compiled op; on GPU DeepSpeed picks FusedAdam
                # (prebuilt in the image), and DeepSpeedCPUAdam when the optimizer is offloaded.
                "torch_adam": env.device.type == "cpu" and not ds.offload_optimizer,
            },
        },
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "zero_optimization": zero,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class DeepSpeedSetup:
    """The DeepSpeed config, made before the model is loaded.

    For ZeRO-3 an `HfDeepSpeedConfig` must be alive while `from_pretrained` runs: transformers
    then loads each weight straight into its partition (`deepspeed.zero.Init`) instead of
    materialising the whole model on every rank. Keep this object until training ends.
    """

    def __init__(self, cfg: TrainerConfig, env: DistEnv, dtype: torch.dtype) -> None:
        self.config = deepspeed_config(cfg, env, dtype)
        self.zero_stage = int(self.config["zero_optimization"]["stage"])
        self._hf: Any = None
        import deepspeed

        # DeepSpeed's own comm layer wraps the process group made by distributed.init (its
        # config checks the batch sizes against the world size it reports).
        deepspeed.init_distributed(dist_backend="nccl" if env.device.type == "cuda" else "gloo", dist_init_required=False)
        if self.zero_stage == 3:
            from transformers.integrations.deepspeed import HfDeepSpeedConfig

            self._hf = HfDeepSpeedConfig(self.config)  # type: ignore[no-untyped-call]


class DeepSpeedEngine:
    """DeepSpeed's engine: ZeRO 0-3, optional optimizer offload.

    Gradient accumulation boundaries are DeepSpeed's; the loss scale is ours (backward runs
    without DeepSpeed's 1/accumulation scaling, see `forward_backward`).
    """

    def __init__(self, cfg: TrainerConfig, model: torch.nn.Module, env: DistEnv, total_steps: int, setup: DeepSpeedSetup) -> None:
        import deepspeed

        hp = cfg.hyperparameters
        self.env = env
        self.setup = setup
        self.zero_stage = setup.zero_stage
        self._module = model
        params = [p for p in model.parameters() if p.requires_grad]
        scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, hp.warmup_ratio))  # noqa: E731
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=params,
            config=setup.config,
            lr_scheduler=scheduler,
            dist_init_required=False,
        )

    def forward_backward(self, batch: dict[str, torch.Tensor], *, scale: float, last_micro: bool) -> torch.Tensor:
        labels = batch["labels"].to(self.engine.device, non_blocking=True)
        logits = self.engine(**_model_inputs(batch, self.engine.device)).logits
        total = loss_sum(logits, labels, shifted=shifted_labels(batch))
        # `scale` already holds 1/(trained tokens of the whole step); DeepSpeed must not divide
        # by the accumulation steps again.
        self.engine.backward(total * scale, scale_wrt_gas=False)
        self.engine.step()  # applies the update only at the accumulation boundary
        return total.detach()

    def step(self) -> None:
        """Nothing to do: `engine.step()` in forward_backward already applied the update."""

    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.engine(**_model_inputs(batch, self.engine.device)).logits  # type: ignore[no-any-return]

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], *, max_new_tokens: int) -> torch.Tensor:
        # ZeRO-3: a rank that finishes early keeps taking part in the others' forward passes.
        synced = self.zero_stage == 3 and self.env.world_size > 1
        return _generate(self._module, batch, self.engine.device, max_new_tokens, synced=synced)

    def save(self, directory: pathlib.Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, save_latest=False, exclude_frozen_parameters=True)

    def load(self, directory: pathlib.Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory), tag=DEEPSPEED_TAG, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {directory}")

    def module(self) -> torch.nn.Module:
        return self._module

    def consolidated_state_dict(self, *, trainable_only: bool) -> dict[str, torch.Tensor] | None:
        """Gather ZeRO-3 partitions one parameter at a time (a plain state_dict would be empty).

        For LoRA only the trainable parameters are gathered: the frozen base is never assembled.
        """
        if self.zero_stage != 3:
            return None
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for name, param in self._module.named_parameters():
            if trainable_only and not param.requires_grad:
                continue
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                if self.env.is_main:
                    out[name] = param.detach().cpu().clone()
        if not trainable_only:
            for name, buf in self._module.named_buffers():
                if self.env.is_main:
                    out[name] = buf.detach().cpu().clone()
        return out if self.env.is_main else None


def make_engine(
    cfg: TrainerConfig, model: torch.nn.Module, env: DistEnv, total_steps: int, dtype: torch.dtype, deepspeed_setup: DeepSpeedSetup | None
) -> Engine:
    if deepspeed_setup is not None:
        return DeepSpeedEngine(cfg, model, env, total_steps, deepspeed_setup)
    return TorchEngine(cfg, model, env, total_steps, dtype)
