"""Checkpoints under `<output>/checkpoints/step-N/`, each completed by its manifest (written last).

A checkpoint holds the engine state (trainable weights or ZeRO shards, optimizer, scheduler),
every rank's RNG state and the trainer state (step, data position, metric history). Every node
stages its files locally and its local rank 0 uploads them; rank 0 then writes `manifest.json`
listing every file with its sha256. Only checkpoints with a manifest are ever resumed from, and
their files are verified against it. The newest `keep` complete checkpoints are kept.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import pickle
import random
import re
import shutil
import time
from typing import Any

import torch

from . import contract, distributed
from .config import CheckpointSettings
from .data import Position
from .engine import Engine
from .storage import FileEntry, Output, describe_files, sha256_file

STATE_FILE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclasses.dataclass
class TrainerState:
    """What the loop needs to continue exactly where it stopped."""

    step: int
    position: Position
    tokens_seen: int
    history: list[dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps(
            {
                "step": self.step,
                "epoch": self.position.epoch,
                "microStep": self.position.micro_step,
                "tokensSeen": self.tokens_seen,
                "history": self.history,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        d = json.loads(text)
        return cls(int(d["step"]), Position(int(d["epoch"]), int(d["microStep"])), int(d["tokensSeen"]), list(d["history"]))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _load_rng_state(path: pathlib.Path) -> dict[str, Any]:
    """Read an rng-rank<r>.pt written by `_rng_state` + torch.save.

    `weights_only=True`: the file comes from the bucket, and a full unpickle would run whatever
    code a planted file names. Python's RNG state (a tuple of ints) and torch's (uint8 tensors)
    load under it unchanged.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"{path.name} is not a plain RNG state, refusing to load it: {first}") from None
    if not isinstance(state, dict) or "python" not in state or "torch" not in state:
        raise RuntimeError(f"{path.name} is not an RNG state")
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, output: Output, settings: CheckpointSettings, staging: pathlib.Path) -> None:
        self.output = output
        self.settings = settings
        self.staging = staging

    @staticmethod
    def rel_dir(step: int) -> str:
        return contract.CHECKPOINT_DIR_FORMAT.format(step=step)

    def save(self, step: int, engine: Engine, state: TrainerState) -> None:
        """Every rank calls this; rank 0 writes the manifest after all files are uploaded."""
        env = distributed.env()
        local = self.staging / f"step-{step}"
        if env.is_local_main:
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
        distributed.barrier()
        started = time.monotonic()
        engine.save(local)
        torch.save(_rng_state(), local / f"rng-rank{env.rank}.pt")
        if env.is_main:
            (local / STATE_FILE).write_text(state.to_json())
        distributed.barrier()
        entries: list[FileEntry] = []
        if env.is_local_main:
            entries = self.output.upload_dir(local, self.rel_dir(step))
        all_entries = {e.path: e for part in distributed.all_gather_object(entries) for e in part}
        if env.is_main:
            manifest = {
                "step": step,
                "worldSize": env.world_size,
                "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": [dataclasses.asdict(e) for e in sorted(all_entries.values(), key=lambda e: e.path)],
            }
            self.output.write_bytes(self.rel_dir(step) + contract.MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
            self._prune(step)
            distributed.print0(f"checkpoint step {step} saved to {self.output.location.child(self.rel_dir(step)).uri} in {time.monotonic() - started:.1f}s")
        distributed.barrier()
        if env.is_local_main:
            shutil.rmtree(local, ignore_errors=True)

    def _steps(self) -> list[int]:
        steps = []
        for name in self.output.list_subdirs(contract.CHECKPOINTS_PREFIX):
            m = STEP_DIR.match(name)
            if m:
                steps.append(int(m.group(1)))
        return sorted(steps)

    def _manifest(self, step: int) -> dict[str, Any] | None:
        raw = self.output.read_bytes(self.rel_dir(step) + contract.MANIFEST_NAME)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None

    def complete_steps(self) -> list[int]:
        """Steps whose manifest exists (half-written checkpoints have none), newest first."""
        return [step for step in reversed(self._steps()) if self._manifest(step) is not None]

    def newest_complete(self) -> int | None:
        """The highest step whose manifest exists (half-written checkpoints have none)."""
        complete = self.complete_steps()
        return complete[0] if complete else None

    def _prune(self, current: int) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones and leftover partial ones."""
        complete = [s for s in self._steps() if self._manifest(s) is not None]
        keep = set(complete[-self.settings.keep :]) | {current}
        for s in self._steps():
            if s not in keep and s < current:
                self.output.delete_prefix(self.rel_dir(s))

    def _fetch_verified(self, step: int, local: pathlib.Path) -> str | None:
        """Download checkpoint `step` to `local` and check it against its manifest; the problem, or None."""
        shutil.rmtree(local, ignore_errors=True)
        manifest = self._manifest(step)
        if manifest is None:
            return "its manifest is missing or unreadable"
        self.output.download_dir(self.rel_dir(step), local)
        prefix = len(self.rel_dir(step))
        for f in manifest["files"]:
            p = local / f["path"][prefix:]
            if not p.is_file():
                return f"{f['path']} is missing"
            if p.stat().st_size != f["size"] or sha256_file(p) != f["sha256"]:
                return f"{f['path']} does not match its manifest (size or sha256)"
        return None

    def restore(self, engine: Engine) -> TrainerState | None:
        """Load the newest complete checkpoint that verifies into `engine`; None when there is none.

        A complete checkpoint whose files do not match its manifest (on any node) is skipped with a
        warning and the next older one is tried; when every complete checkpoint is damaged, this
        raises rather than silently starting over.
        """
        env = distributed.env()
        candidates: list[int] = distributed.broadcast_object(self.complete_steps() if env.is_main else None)
        if not candidates:
            return None
        skipped: list[str] = []
        for step in candidates:
            local = self.staging / f"restore-step-{step}"
            problem = self._fetch_verified(step, local) if env.is_local_main else None
            problems = [p for p in distributed.all_gather_object(problem) if p]
            if problems:
                if env.is_local_main:
                    shutil.rmtree(local, ignore_errors=True)
                skipped.append(f"step {step}: {problems[0]}")
                distributed.print0(f"warning: checkpoint step {step} is damaged ({problems[0]}); trying the next older checkpoint")
                continue
            engine.load(local)
            rng = local / f"rng-rank{env.rank}.pt"
            if rng.is_file():
                _set_rng_state(_load_rng_state(rng))
            state = TrainerState.from_json((local / STATE_FILE).read_text())
            distributed.barrier()
            if env.is_local_main:
                shutil.rmtree(local, ignore_errors=True)
            distributed.print0(f"resumed from checkpoint step {step} (epoch {state.position.epoch}, micro-step {state.position.micro_step})")
            return state
        raise RuntimeError("no checkpoint matches its manifest, refusing to start over: " + "; ".join(skipped))

__all__ = ["Checkpointer", "TrainerState", "describe_files"]
