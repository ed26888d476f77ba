"""The final output: weights (adapter/ or model/), metrics.jsonl, then manifest.json LAST.

A reader that finds `<output>/manifest.json` finds every file it lists, with matching sha256:
a manifest left by an earlier run is deleted before any new file is uploaded, and the new one
is written after all of them. The upload is retried in-process on storage failures.
The manifest also records the base model, method, hyperparameters, final metrics, versions and
an output check (logits of the trained model on two examples) that anyone can use to verify a
reloaded adapter.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import shutil
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import torch

from . import __version__, contract, distributed
from .config import TrainerConfig
from .data import Example, collate
from .distributed import DistEnv
from .engine import Engine
from .errors import StorageError
from .recipes import Recipe
from .storage import FileEntry, Output, describe_files

MANIFEST_API_VERSION = "finetune.dev/manifest-v1"
CHECK_LOGITS = 16  # logits per example kept in the manifest's output check
UPLOAD_ATTEMPTS = 4  # tries of the final upload (the whole of it: files, then the manifest)
UPLOAD_BACKOFF_S = 2.0  # wait before the 2nd try; doubled before each later one

T = TypeVar("T")


def versions() -> dict[str, str]:
    out = {"finetuneTrainer": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "deepspeed", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


@torch.no_grad()
def output_check(model: torch.nn.Module, examples: list[Example], pad_id: int) -> dict[str, Any]:
    """Inputs and the first logits of the trained model's last real position, for reload checks."""
    if not examples:
        return {}
    # each input as one plain sequence (a packed block's per-document positions dropped): what a
    # reload check feeds the model, `inputIds` alone
    batch = collate([dataclasses.replace(ex, position_ids=None) for ex in examples], pad_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "decoder_input_ids", "pixel_values")}
    logits = model(**inputs).logits.float().cpu()
    model.train(was_training)
    rows = []
    for i, ex in enumerate(examples):
        # the last real position: of the decoder for seq2seq, of the input for a causal LM
        last = len(ex.decoder_input_ids if ex.decoder_input_ids is not None else ex.input_ids) - 1
        row = logits[i] if logits.dim() == 2 else logits[i, last]
        rows.append([round(float(v), 6) for v in row[:CHECK_LOGITS]])
    if examples[0].pixels is not None:  # images: the rows, reprocessed on reload with the saved processor
        return {"images": [ex.source for ex in examples], "logits": rows}
    check: dict[str, Any] = {"inputIds": [ex.input_ids for ex in examples], "logits": rows}
    if examples[0].decoder_input_ids is not None:
        check["decoderInputIds"] = [ex.decoder_input_ids for ex in examples]
    return check


def write_final_output(
    *,
    cfg: TrainerConfig,
    env: DistEnv,
    output: Output,
    recipe: Recipe,
    engine: Engine,
    tokenizer: Any,
    staging: pathlib.Path,
    history: list[dict[str, Any]],
    final_metrics: dict[str, Any],
    dataset_stats: dict[str, Any],
    probe: list[Example],
    pad_id: int,
) -> dict[str, Any]:
    """Every rank calls this (ZeRO-3 gathers collectively); rank 0 saves and uploads.

    Rank 0 first deletes a manifest left by an earlier run with the same output, so a manifest
    never describes files this run is replacing; then uploads the weights, metrics.jsonl and
    the new manifest (last), retrying the whole upload on a storage failure (`UPLOAD_ATTEMPTS`).
    """
    state_dict = engine.consolidated_state_dict(trainable_only=recipe.saves_trainable_only)
    result: dict[str, Any] = {}
    if env.is_main:
        with_retries(lambda: remove_stale_manifest(output), f"checking {output.location.child(contract.MANIFEST_NAME).uri}")
        shutil.rmtree(staging, ignore_errors=True)
        weights_dir = staging / recipe.output_prefix.rstrip("/")
        weights_dir.mkdir(parents=True)
        model = engine.module()
        recipe.save_final(model, tokenizer, weights_dir, state_dict)
        check = output_check(model, probe, pad_id) if state_dict is None else {}
        metrics_file = staging / contract.METRICS_HISTORY_NAME
        metrics_file.write_text("".join(json.dumps(r) + "\n" for r in history))
        entries: list[FileEntry] = describe_files(weights_dir, recipe.output_prefix)
        entries += [e for e in describe_files(staging) if e.path == contract.METRICS_HISTORY_NAME]
        manifest = {
            "apiVersion": MANIFEST_API_VERSION,
            "jobName": cfg.job_name,
            "namespace": cfg.namespace,
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "baseModel": cfg.model.uri,
            "dataset": {"uri": _safe_uri(cfg.dataset.uri), "format": cfg.dataset.format, **dataset_stats},
            "method": {**cfg.method.model_dump(by_alias=True, exclude_none=True), "resolvedTargetModules": getattr(recipe, "target_modules", None)},
            "hyperparameters": cfg.hyperparameters.model_dump(by_alias=True, exclude_none=True),
            "worldSize": env.world_size,
            "weights": recipe.output_prefix,
            "metrics": final_metrics,
            "versions": versions(),
            "outputCheck": check,
            "files": [{"path": e.path, "sha256": e.sha256, "size": e.size} for e in entries],
        }
        manifest_bytes = json.dumps(manifest, indent=2).encode()

        def upload() -> None:
            output.upload_dir(weights_dir, recipe.output_prefix)
            output.upload_files([(metrics_file, contract.METRICS_HISTORY_NAME)])
            output.write_bytes(contract.MANIFEST_NAME, manifest_bytes)  # LAST

        with_retries(upload, f"final upload to {output.uri}")
        total = sum(e.size for e in entries)
        distributed.print0(f"uploaded {len(entries)} files ({total} bytes) and {contract.MANIFEST_NAME} to {output.uri}")
        result = {
            "outputUri": output.uri,
            "adapterUri": output.location.child(recipe.output_prefix).uri,
            "manifestUri": output.location.child(contract.MANIFEST_NAME).uri,
            "manifestSha256": _sha256_bytes(manifest_bytes),
        }
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()  # the others wait until the upload is done
    return result


def remove_stale_manifest(output: Output) -> bool:
    """Delete `<output>/manifest.json` left by an earlier run (saying so first); True if there was one."""
    if output.read_bytes(contract.MANIFEST_NAME) is None:  # a manifest is a few KB: no separate HEAD call
        return False
    uri = output.location.child(contract.MANIFEST_NAME).uri
    distributed.print0(f"deleting {uri} from an earlier run before uploading new files (it would describe files this run replaces)")
    output.delete(contract.MANIFEST_NAME)
    return True


def with_retries(action: Callable[[], T], what: str, *, attempts: int | None = None, backoff_s: float | None = None) -> T:
    """`action()`, retried on storage failures with exponential backoff (2, 4, 8 s by default).

    A transient S3 or network failure at the end must not cost the whole training run. Each
    failure is printed with its readable message (storage errors never include credentials);
    after the last attempt a StorageError (exit 4) says how many attempts failed.
    """
    attempts = attempts or UPLOAD_ATTEMPTS
    backoff_s = UPLOAD_BACKOFF_S if backoff_s is None else backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (StorageError, OSError) as err:
            message = str(err) if isinstance(err, StorageError) else f"{type(err).__name__}: {err}"
            if attempt == attempts:
                raise StorageError(f"{what} failed {attempts} times, giving up; last error: {message}") from None
            delay = backoff_s * 2 ** (attempt - 1)
            distributed.print0(f"{what}: attempt {attempt} of {attempts} failed: {message}; retrying in {delay:g}s")
            time.sleep(delay)
    raise AssertionError("unreachable")


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _safe_uri(uri: str) -> str:
    """Pre-signed URLs carry credentials in the query string: never record it."""
    return uri.split("?", 1)[0]
