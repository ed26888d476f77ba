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
    Batches,
    Example,
    Position,
    eval_batches,
    label_names,
    pack,
    read_rows,
    split,
    tokenize,
)
from .distributed import DistEnv
from .engine import Engine, make_engine
from .errors import Preempted
from .metrics import NullMetrics, Progress, TrainerMetrics
from .output import write_final_output
from .recipes import load_tokenizer, preflight, recipe_for, task_for, train_dtype
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
    env = distributed.init()
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
    tokenizer = load_tokenizer(model_dir, cfg)
    rows = read_rows(files, cfg.dataset.format)
    labels = label_names(rows) if cfg.dataset.format == "classification" else None
    examples, token_stats = tokenize(rows, cfg.dataset.format, tokenizer, hp.max_seq_length, labels)
    train_set, val_set = split(examples, cfg.dataset.validation_split, hp.seed)
    task = task_for(cfg, labels)
    if task.kind == "causal-lm" and hp.packing:
        train_set = pack(train_set, hp.max_seq_length)
    distributed.print0(
        f"dataset: {len(rows)} rows -> {len(train_set)} training {'blocks' if hp.packing and task.kind == 'causal-lm' else 'examples'}, "
        f"{len(val_set)} validation examples; {token_stats.longer_than_max} rows truncated to {hp.max_seq_length} tokens"
    )

    recipe = recipe_for(cfg, env)
    dtype = train_dtype(cfg, env)
    model = recipe.build(model_dir, task)
    batches = Batches(train_set, hp.batch_size, env.rank, env.world_size, hp.seed, tokenizer.pad_token_id)
    steps_per_epoch = max(1, math.ceil(batches.micro_steps_per_epoch / hp.gradient_accumulation_steps))
    total_steps = hp.max_steps or max(1, math.ceil(hp.epochs * steps_per_epoch))
    engine = make_engine(cfg, model, env, total_steps, dtype)

    # --- resume --------------------------------------------------------------------------------
    checkpoints = Checkpointer(output, cfg.checkpoint, work / "checkpoints")
    state = checkpoints.restore(engine) or TrainerState(0, Position(0, 0), 0, [])
    attempt = os.environ.get(contract.ENV_ATTEMPT, "0")
    distributed.print0(
        f"training {recipe.name} on {env.world_size} process(es), {total_steps} steps "
        f"({steps_per_epoch}/epoch), starting at step {state.step}, attempt {attempt}"
    )

    # --- train ---------------------------------------------------------------------------------
    progress = Progress(phase="Running", total_steps=total_steps, world_size=env.world_size, step=state.step, trained_tokens=state.tokens_seen)
    throughput = Throughput()
    batch_iter = batches.iterate(state.position)
    position = state.position
    eval_every = hp.eval_every_steps
    model.train()
    while state.step < total_steps:
        step_started = time.monotonic()
        loss_sum, tokens = 0.0, 0
        for micro in range(hp.gradient_accumulation_steps):
            position, batch = next(batch_iter)
            loss_sum += engine.forward_backward(batch, last_micro=micro == hp.gradient_accumulation_steps - 1)
            tokens += int(batch["attention_mask"].sum())
        engine.step()
        loss_sum, tokens_all, stop = distributed.all_reduce_sum(
            [loss_sum / hp.gradient_accumulation_steps, float(tokens), 1.0 if sigterm.set else 0.0]
        )
        state.step += 1
        state.position = _after(position, batches.micro_steps_per_epoch)
        state.tokens_seen += int(tokens_all)
        throughput.add(int(tokens_all), time.monotonic() - step_started)
        progress = dataclasses.replace(
            progress,
            step=state.step,
            epoch=round(state.step / steps_per_epoch, 4),
            percent=round(100.0 * state.step / total_steps, 2),
            loss=loss_sum / env.world_size,
            learning_rate=engine.learning_rate(),
            tokens_per_second=throughput.tokens_per_second,
            eta_seconds=round(throughput.last_step_s * (total_steps - state.step), 1),
            trained_tokens=state.tokens_seen,
        )
        evaluated = bool(val_set and eval_every and state.step % eval_every == 0 and state.step < total_steps)
        if evaluated:
            progress.eval_loss = evaluate(engine, val_set, hp.batch_size, env, tokenizer.pad_token_id)
        if evaluated or state.step % hp.logging_steps == 0 or state.step == total_steps:
            state.history.append(_history_row(progress, with_eval=evaluated))
        metrics.update(progress, int(tokens_all))

        if stop:
            saved = _checkpoint_on_sigterm(checkpoints, engine, state, sigterm)
            raise Preempted(state.step, saved)
        if state.step % cfg.checkpoint.every_steps == 0 and state.step < total_steps:
            checkpoints.save(state.step, engine, state)

    train_tokens_per_second = throughput.tokens_per_second  # before the final evaluation and upload

    # --- final evaluation, save, upload ---------------------------------------------------------
    if val_set:
        progress.eval_loss = evaluate(engine, val_set, hp.batch_size, env, tokenizer.pad_token_id)
        state.history.append({**_history_row(progress, with_eval=True), "final": True})
    progress.phase = "Uploading"
    metrics.update(progress)
    final_metrics = {
        "steps": state.step,
        "loss": progress.loss,
        "evalLoss": progress.eval_loss,
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
        dataset_stats={
            **token_stats.as_dict(),
            "trainExamples": len(train_set),
            "validationExamples": len(val_set),
            **({"labels": labels} if labels is not None else {}),
        },
        probe=val_set[:2] or train_set[:2],
        pad_id=tokenizer.pad_token_id,
    )
    progress.phase = "Succeeded"
    metrics.update(progress)
    return {"status": "Succeeded", **final_metrics, **result}


def _after(pos: Position, per_epoch: int) -> Position:
    """The position following `pos`."""
    if pos.micro_step + 1 >= per_epoch:
        return Position(pos.epoch + 1, 0)
    return Position(pos.epoch, pos.micro_step + 1)


def _history_row(p: Progress, *, with_eval: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"step": p.step, "epoch": p.epoch, "loss": p.loss, "learningRate": p.learning_rate, "tokensPerSecond": p.tokens_per_second}
    if with_eval and p.eval_loss is not None:
        row["evalLoss"] = p.eval_loss
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


@torch.no_grad()
def evaluate(engine: Engine, val_set: list[Example], batch_size: int, env: DistEnv, pad_id: int) -> float:
    """Mean loss over the validation split (per token for causal LM, per example for classifiers).

    Every rank runs the same number of forward passes (ZeRO-3 gathers parameters collectively):
    a rank with fewer batches repeats one with weight zero.
    """
    module = engine.module()
    module.eval()
    mine = list(eval_batches(val_set, batch_size, env.rank, env.world_size, pad_id))
    n = int(distributed.all_reduce_max(float(len(mine))))
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(n):
        if mine:
            out = engine.evaluate(mine[min(i, len(mine) - 1)])
            if i < len(mine):
                total += out
        else:  # this rank has no validation data: still take part
            engine.evaluate(next(iter(eval_batches(val_set, 1, 0, 1, pad_id))))
    module.train()
    loss_sum, count = distributed.all_reduce_sum(total.tolist())
    return loss_sum / max(count, 1.0)
