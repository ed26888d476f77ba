"""The `train` command, top to bottom: config -> distributed init -> load model and data ->
train -> save -> upload -> cleanup.

Run it with `python -m finetune_trainer train --config cfg.yaml` (one process) or
`torchrun -m finetune_trainer train --config cfg.yaml` (several processes / nodes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import torch

from . import contract, distributed
from .checkpoint import Checkpointer, TrainerState
from .config import TrainerConfig
from .data import (
    PACKING_MODEL_TYPES,
    Batches,
    Example,
    Position,
    eval_batches,
    pack,
    packing_isolated,
    real_tokens,
)
from .distributed import DistEnv
from .engine import DeepSpeedSetup, Engine, batch_targets, loss_sum, make_engine, shifted_labels
from .errors import Preempted, SetupError
from .generation import generation_scores
from .inputs import prepare
from .metrics import NullMetrics, Progress, TrainerMetrics
from .output import write_final_output
from .recipes import load_inputs, preflight, recipe_for, task_for, train_dtype
from .sources import fetch_dataset, fetch_model, work_dir
from .storage import Output


class SigtermFlag:
    """Set by SIGTERM (pod deletion, preemption); the loop checks it after every step."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received_at: float | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received_at = time.monotonic()
        self.event.set()

    @property
    def set(self) -> bool:
        return self.event.is_set()


@dataclasses.dataclass
class Throughput:
    """Tokens per second over the steps since the first one (which includes warm-up)."""

    started: float = 0.0
    tokens: int = 0
    steps: int = 0
    last_step_s: float = 0.0

    def add(self, tokens: int, step_s: float) -> None:
        if self.steps == 0:
            self.started = time.monotonic()
        else:
            self.tokens += tokens
        self.steps += 1
        self.last_step_s = step_s if self.last_step_s == 0 else 0.8 * self.last_step_s + 0.2 * step_s

    @property
    def tokens_per_second(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return self.tokens / elapsed if self.steps > 1 and elapsed > 0 else None


def run(cfg: TrainerConfig) -> dict[str, Any]:
    """Train as configured and return the JSON summary (rank 0's is the one that counts)."""
    sigterm = SigtermFlag()
    sigterm.install()
    env = distributed.init(group_for_one=cfg.method.deepspeed is not None)
    torch.manual_seed(cfg.hyperparameters.seed)
    metrics = _start_metrics(cfg, env)
    try:
        summary = _train(cfg, env, metrics, sigterm)
    except BaseException:
        metrics.close()
        distributed.cleanup(success=False)
        raise
    metrics.close()
    distributed.cleanup()
    return summary


def _start_metrics(cfg: TrainerConfig, env: DistEnv) -> TrainerMetrics | NullMetrics:
    port = int(os.environ.get(contract.ENV_METRICS_PORT, cfg.metrics_port))
    if not env.is_local_main or port == 0:
        return NullMetrics()
    metrics = TrainerMetrics(cfg.job_name, cfg.namespace, env.node_rank)
    metrics.serve(port, with_progress=env.is_main)
    return metrics


def _train(cfg: TrainerConfig, env: DistEnv, metrics: TrainerMetrics | NullMetrics, sigterm: SigtermFlag) -> dict[str, Any]:
    hp = cfg.hyperparameters
    preflight(cfg, env)
    output = Output(cfg.output.uri, cfg.output.endpoint)
    if env.is_main:
        output.check_writable()  # a wrong bucket or key fails now, not after hours of training
    work = work_dir(cfg)

    # --- model and data ------------------------------------------------------------------------
    metrics.update(Progress(phase="Initializing", message="downloading model and dataset", world_size=env.world_size))
    model_dir = fetch_model(cfg, work)
    files = fetch_dataset(cfg, work)
    tokenizer = load_inputs(model_dir, cfg)  # a tokenizer, or the image processor for images
    prepared = prepare(cfg, files, model_dir, tokenizer, work)
    rows, labels, token_stats = prepared.rows, prepared.labels, prepared.stats
    train_set, val_set = prepared.split(cfg, tokenizer, env.rank)
    task = task_for(cfg, labels)

    recipe = recipe_for(cfg, env)
    dtype = train_dtype(cfg, env)
    ds_setup = DeepSpeedSetup(cfg, env, dtype) if cfg.method.deepspeed is not None else None  # before loading (ZeRO-3)
    model = recipe.build(model_dir, task, tokenizer.pad_token_id)
    if ds_setup is not None and ds_setup.zero_stage == 3:
        partitioned = all(hasattr(p, "ds_id") for p in model.parameters() if not p.requires_grad or cfg.method.type == "full")
        local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
        distributed.print0(f"ZeRO-3: weights loaded {'partitioned (zero.Init)' if partitioned else 'WHOLE on every rank'}; this rank holds {local} elements")
    packing = task.kind == "causal-lm" and decide_packing(cfg, model, ds_setup)
    if packing:
        train_set = pack(train_set, hp.max_seq_length)
    distributed.print0(
        f"dataset: {len(rows)} rows -> {len(train_set)} training {'blocks (packed)' if packing else 'examples'}, "
        f"{len(val_set)} validation examples; {token_stats.truncation_summary(hp.max_seq_length)}"
    )
    batches = Batches(train_set, hp.batch_size, env.rank, env.world_size, hp.seed, tokenizer.pad_token_id, group_by_length=not packing)
    steps_per_epoch = max(1, math.ceil(batches.micro_steps_per_epoch / hp.gradient_accumulation_steps))
    total_steps = hp.max_steps or max(1, math.ceil(hp.epochs * steps_per_epoch))
    checkpoint_every = cfg.checkpoint_every(total_steps)
    engine = make_engine(cfg, model, env, total_steps, dtype, ds_setup)

    # --- resume --------------------------------------------------------------------------------
    checkpoints = Checkpointer(output, cfg.checkpoint, work / "checkpoints")
    state = checkpoints.restore(engine) or TrainerState(0, Position(0, 0), 0, [])
    # from the pod's attempt label (empty in a pod Kueue restarted from its Workload's template)
    attempt = os.environ.get(contract.ENV_ATTEMPT) or "?"
    distributed.print0(
        f"training {recipe.name} on {env.world_size} process(es), {total_steps} steps "
        f"({steps_per_epoch}/epoch), checkpoint every {checkpoint_every}, starting at step {state.step}, attempt {attempt}"
    )

    # --- train ---------------------------------------------------------------------------------
    progress = Progress(phase="Running", total_steps=total_steps, world_size=env.world_size, step=state.step, trained_tokens=state.tokens_seen)
    throughput = Throughput()
    batch_iter = batches.iterate(state.position)
    position = state.position
    eval_every = hp.eval_every_steps
    num_labels = len(task.labels) if task.classifier else 0
    scorer = _Scorer(tokenizer, hp.max_seq_length) if task.kind == "seq2seq" else None
    model.train()
    while state.step < total_steps:
        step_started = time.monotonic()
        micro_batches = []
        for _ in range(hp.gradient_accumulation_steps):
            position, batch = next(batch_iter)
            micro_batches.append(batch)
        stepped = train_step(engine, micro_batches, env, stop=sigterm.set)
        state.step += 1
        state.position = _after(position, batches.micro_steps_per_epoch)
        state.tokens_seen += stepped.tokens
        throughput.add(stepped.tokens, time.monotonic() - step_started)
        progress = dataclasses.replace(
            progress,
            step=state.step,
            epoch=round(state.step / steps_per_epoch, 4),
            percent=round(100.0 * state.step / total_steps, 2),
            loss=stepped.loss,
            learning_rate=engine.learning_rate(),
            tokens_per_second=throughput.tokens_per_second,
            eta_seconds=round(throughput.last_step_s * (total_steps - state.step), 1),
            trained_tokens=state.tokens_seen,
        )
        evaluated = bool(val_set and eval_every and state.step % eval_every == 0 and state.step < total_steps)
        if evaluated:
            progress = _with_eval(progress, evaluate(engine, val_set, hp.batch_size, env, tokenizer.pad_token_id, num_labels, scorer))
        if evaluated or state.step % hp.logging_steps == 0 or state.step == total_steps:
            state.history.append(_history_row(progress, with_eval=evaluated))
        metrics.update(progress, stepped.tokens)

        if stepped.stop:
            saved = _checkpoint_on_sigterm(checkpoints, engine, state, sigterm)
            raise Preempted(state.step, saved)
        if state.step % checkpoint_every == 0 and state.step < total_steps:
            checkpoints.save(state.step, engine, state)

    train_tokens_per_second = throughput.tokens_per_second  # before the final evaluation and upload

    # --- final evaluation, save, upload ---------------------------------------------------------
    if val_set:
        progress = _with_eval(progress, evaluate(engine, val_set, hp.batch_size, env, tokenizer.pad_token_id, num_labels, scorer))
        state.history.append({**_history_row(progress, with_eval=True), "final": True})
    progress.phase = "Uploading"
    metrics.update(progress)
    final_metrics = {
        "steps": state.step,
        "loss": progress.loss,
        "evalLoss": progress.eval_loss,
        **({"evalAccuracy": progress.eval_accuracy} if progress.eval_accuracy is not None else {}),
        **({"evalF1": progress.eval_f1} if progress.eval_f1 is not None else {}),
        **({"evalExactMatch": progress.eval_exact_match} if progress.eval_exact_match is not None else {}),
        **({"evalRougeL": progress.eval_rouge_l} if progress.eval_rouge_l is not None else {}),
        "trainedTokens": state.tokens_seen,
        "tokensPerSecond": train_tokens_per_second,
        "epochs": progress.epoch,
    }
    result = write_final_output(
        cfg=cfg,
        env=env,
        output=output,
        recipe=recipe,
        engine=engine,
        tokenizer=tokenizer,
        staging=work / "final",
        history=state.history,
        final_metrics=final_metrics,
        dataset_stats={**prepared.stats_dict(), "trainExamples": len(train_set), "validationExamples": len(val_set)},
        probe=val_set[:2] or train_set[:2],
        pad_id=tokenizer.pad_token_id,
    )
    progress.phase = "Succeeded"
    metrics.update(progress)
    return {"status": "Succeeded", **final_metrics, **result}


def _with_eval(p: Progress, ev: EvalResult) -> Progress:
    return dataclasses.replace(p, eval_loss=ev.loss, eval_accuracy=ev.accuracy, eval_f1=ev.f1, eval_exact_match=ev.exact_match, eval_rouge_l=ev.rouge_l)


def _after(pos: Position, per_epoch: int) -> Position:
    """The position following `pos`."""
    if pos.micro_step + 1 >= per_epoch:
        return Position(pos.epoch + 1, 0)
    return Position(pos.epoch, pos.micro_step + 1)


def _history_row(p: Progress, *, with_eval: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"step": p.step, "epoch": p.epoch, "loss": p.loss, "learningRate": p.learning_rate, "tokensPerSecond": p.tokens_per_second}
    if with_eval:
        for key, value in (
            ("evalLoss", p.eval_loss),
            ("evalAccuracy", p.eval_accuracy),
            ("evalF1", p.eval_f1),
            ("evalExactMatch", p.eval_exact_match),
            ("evalRougeL", p.eval_rouge_l),
        ):
            if value is not None:
                row[key] = value
    return row


def _checkpoint_on_sigterm(checkpoints: Checkpointer, engine: Engine, state: TrainerState, sigterm: SigtermFlag) -> bool:
    """Checkpoint now (all ranks agreed to stop); False if it failed (the run still stops)."""
    distributed.print0(f"SIGTERM: writing a checkpoint at step {state.step} before stopping")
    try:
        checkpoints.save(state.step, engine, state)
        return True
    except Exception as err:  # the pod is going away either way; report, do not mask Preempted
        distributed.print0(f"SIGTERM checkpoint failed: {err}")
        return False


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One optimizer step, summed over micro-batches and ranks."""

    loss: float | None  # mean loss per trained target; None when the step had no target
    targets: int  # trained next-token targets (causal LM) or examples (classification)
    tokens: int  # real (non-padding) input tokens
    stop: bool  # some rank received SIGTERM


def train_step(engine: Engine, micro_batches: list[dict[str, torch.Tensor]], env: DistEnv, *, stop: bool = False) -> StepResult:
    """Forward/backward every micro-batch, then one optimizer step, on the mean over all targets.

    The objective is the mean loss over every trained target of the step, on every rank: the
    targets are counted first and all-reduced, and each micro-batch back-propagates its loss SUM
    times world_size / targets (DDP and DeepSpeed average gradients over ranks). So batchSize 8 x
    accumulation 1, batchSize 1 x accumulation 8 and 2 ranks x accumulation 4 optimise the same
    function. Host syncs: two small all-reduces per step, none per micro-batch.
    """
    local_targets = sum(batch_targets(b) for b in micro_batches)
    local_tokens = sum(real_tokens(b) for b in micro_batches)
    (targets,) = distributed.all_reduce_sum([float(local_targets)])
    scale = env.world_size / targets if targets > 0 else 0.0
    total: torch.Tensor | None = None
    for i, batch in enumerate(micro_batches):
        part = engine.forward_backward(batch, scale=scale, last_micro=i == len(micro_batches) - 1)
        total = part if total is None else total + part
    engine.step()
    assert total is not None
    loss_sum, tokens, stops = distributed.all_reduce_sum([float(total), float(local_tokens), 1.0 if stop else 0.0])
    return StepResult(loss_sum / targets if targets > 0 else None, int(targets), int(tokens), stops > 0)


def decide_packing(cfg: TrainerConfig, model: torch.nn.Module, ds_setup: DeepSpeedSetup | None) -> bool:
    """Pack only where each document provably attends to itself alone.

    Unset: on for model families known to honour packed positions, confirmed on the loaded model
    (two short documents, packed vs alone). `packing: true` on a model that fails the check is an
    error. Under ZeRO-3 the weights are partitioned before the engine exists, so the family list
    alone decides.
    """
    wanted = cfg.hyperparameters.packing
    if wanted is False:
        return False
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    known = model_type in PACKING_MODEL_TYPES
    if ds_setup is not None and ds_setup.zero_stage == 3:
        if known:
            return True
        if wanted:
            raise SetupError(f"hyperparameters.packing: cannot verify document isolation for model type {model_type!r} under ZeRO-3; set packing: false")
        return False
    if wanted is None and not known:
        distributed.print0(f"packing: off (model type {model_type!r} is not known to keep packed documents apart)")
        return False
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab and packing_isolated(model, vocab):
        return True
    if wanted:
        raise SetupError(
            f"hyperparameters.packing: model type {model_type!r} lets packed documents attend to each other "
            "(its attention ignores packed position_ids); set packing: false"
        )
    distributed.print0(f"packing: off (model type {model_type!r} failed the packed-attention check)")
    return False


@dataclasses.dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float | None = None
    f1: float | None = None  # macro-F1, for more than two classes
    exact_match: float | None = None  # seq2seq: greedy output equals the target (generation.py)
    rouge_l: float | None = None  # seq2seq: mean ROUGE-L F-measure of the greedy output


@dataclasses.dataclass(frozen=True)
class _Scorer:
    """What scoring generated text needs: the tokenizer to decode and the longest output."""

    tokenizer: Any
    max_new_tokens: int

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def classification_scores(confusion: torch.Tensor) -> tuple[float, float | None]:
    """Accuracy and (for more than two classes) macro-F1 from a [true, predicted] count matrix."""
    total = float(confusion.sum())
    accuracy = float(confusion.diagonal().sum()) / total if total else 0.0
    k = confusion.shape[0]
    if k <= 2:
        return accuracy, None
    tp = confusion.diagonal()
    precision_den = confusion.sum(0)
    recall_den = confusion.sum(1)
    f1s = []
    for c in range(k):
        if recall_den[c] == 0 and precision_den[c] == 0:
            continue  # class absent from labels and predictions: no evidence either way
        denom = float(precision_den[c] + recall_den[c])
        f1s.append(2.0 * float(tp[c]) / denom if denom else 0.0)
    return accuracy, (sum(f1s) / len(f1s) if f1s else 0.0)


@torch.no_grad()
def evaluate(
    engine: Engine, val_set: list[Example], batch_size: int, env: DistEnv, pad_id: int, num_labels: int = 0, scorer: _Scorer | None = None
) -> EvalResult:
    """Mean loss over the validation split (per token for causal LM, per example for classifiers),
    plus accuracy and macro-F1 for classifiers, and exact match and ROUGE-L of greedy outputs on
    a sample for seq2seq (`scorer`).

    Every rank runs the same number of forward passes (ZeRO-3 gathers parameters collectively):
    a rank with fewer batches repeats one and does not count it.
    """
    module = engine.module()
    module.eval()
    mine = list(eval_batches(val_set, batch_size, env.rank, env.world_size, pad_id))
    n = int(distributed.all_reduce_max(float(len(mine))))
    sums = torch.zeros(2, dtype=torch.float64)
    confusion = torch.zeros((num_labels, num_labels), dtype=torch.float64)
    for i in range(n):
        batch = mine[min(i, len(mine) - 1)] if mine else next(iter(eval_batches(val_set, 1, 0, 1, pad_id)))
        logits = engine.logits(batch)
        if not mine or i >= len(mine):
            continue  # took part in the collective forward only
        labels = batch["labels"].to(logits.device)
        sums += torch.tensor([float(loss_sum(logits, labels, shifted=shifted_labels(batch))), float(batch_targets(batch))], dtype=torch.float64)
        if num_labels:
            pairs = batch["labels"] * num_labels + logits.argmax(-1).cpu()
            confusion += torch.bincount(pairs, minlength=num_labels * num_labels).reshape(num_labels, num_labels)
    module.train()
    reduced = distributed.all_reduce_sum([*sums.tolist(), *confusion.flatten().tolist()])
    loss = reduced[0] / max(reduced[1], 1.0)
    if scorer is not None:
        exact, rouge, scored = generation_scores(engine, val_set, batch_size, env, pad_id, scorer.decode, scorer.max_new_tokens)
        return EvalResult(loss, exact_match=round(exact, 6) if scored else None, rouge_l=round(rouge, 6) if scored else None)
    if not num_labels:
        return EvalResult(loss)
    accuracy, f1 = classification_scores(torch.tensor(reduced[2:], dtype=torch.float64).reshape(num_labels, num_labels))
    return EvalResult(loss, round(accuracy, 6), None if f1 is None else round(f1, 6))
