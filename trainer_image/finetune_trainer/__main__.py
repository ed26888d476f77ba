"""Entry point of the trainer image.

    python -m finetune_trainer train    --config cfg.yaml   # one process
    torchrun -m finetune_trainer train  --config cfg.yaml   # several processes / nodes (PET_* env)
    python -m finetune_trainer validate --config cfg.yaml   # check model + dataset, no training

The config path may also come from $FINETUNE_CONFIG (the operator mounts it there). The JSON
summary goes to stdout (rank 0) and to the termination message file
($FINETUNE_TERMINATION_MESSAGE_PATH, else /dev/termination-log when Kubernetes created it).
Exit codes are those of finetune_trainer.contract.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import traceback
from typing import Any

from . import contract
from .config import ConfigError, load_config
from .errors import exit_code_for, reason_for

TERMINATION_MESSAGE_LIMIT = 4096  # Kubernetes truncates longer messages
#: What a cut summary always keeps: launch.py relays `exitCode`; the operator's status reads the
#: outcome and the output's location and checksum (FineTuneJob.status.output, trainedTokens).
ESSENTIAL_KEYS = ("status", "reason", "exitCode", "outputUri", "adapterUri", "manifestUri", "manifestSha256", "trainedTokens")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune_trainer", description="Fine-tune a model as a TrainerConfig says.")
    p.add_argument("command", choices=["train", "validate"], nargs="?", default="train")
    p.add_argument("--config", help=f"TrainerConfig file (default: ${contract.ENV_CONFIG_PATH}, else {contract.CONFIG_PATH})")
    p.add_argument("--termination-log", help=f"where to write the JSON summary (default: ${contract.ENV_TERMINATION_MESSAGE_PATH})")
    return p


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def _encoded_len(doc: dict[str, Any]) -> int:
    return len(json.dumps(doc, separators=(",", ":")).encode())


def termination_text(summary: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The summary as JSON of at most `limit` bytes (UTF-8), always valid JSON keeping `exitCode`.

    Kubernetes keeps only the first `limit` bytes of the file, so a cut JSON document would lose
    the exit code that launch.py relays. Too long: keep the essential keys (`ESSENTIAL_KEYS`: the
    exit code and the output's URIs and sha256) and shorten `message`.
    """
    text = json.dumps(summary, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text
    keep: dict[str, Any] = {k: summary[k] for k in (*ESSENTIAL_KEYS, "message", "steps", "loss") if k in summary}
    message = str(keep.get("message", ""))
    keep["message"] = ""
    budget = limit - _encoded_len(keep)
    if budget < 0:  # even without a message too long: keep only what launch.py and the operator need
        keep = {k: summary[k] for k in ESSENTIAL_KEYS if k in summary}
        keep["reason"] = str(keep.get("reason", ""))[:200]
        keep["message"] = ""
        budget = limit - _encoded_len(keep)
    marker = " ... [truncated]"
    lo, hi = 0, len(message)  # the longest prefix whose JSON-escaped form fits the budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(json.dumps(message[:mid] + marker).encode()) - 2 <= budget:
            lo = mid
        else:
            hi = mid - 1
    keep["message"] = message[:lo] + marker if len(json.dumps(message[:lo] + marker).encode()) - 2 <= budget else ""
    return json.dumps(keep, separators=(",", ":"))


def write_termination_message(summary: dict[str, Any], path: str | None) -> None:
    """Write the summary where Kubernetes reads it; the default path only when it already exists."""
    target = path or os.environ.get(contract.ENV_TERMINATION_MESSAGE_PATH)
    if not target:
        if not os.path.exists(contract.TERMINATION_MESSAGE_PATH):
            return  # not in a pod: do not create /dev/termination-log
        target = contract.TERMINATION_MESSAGE_PATH
    try:
        pathlib.Path(target).write_text(termination_text(summary))
    except OSError as err:
        print(f"cannot write the termination message to {target}: {err.strerror}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config_path = args.config or os.environ.get(contract.ENV_CONFIG_PATH) or contract.CONFIG_PATH
    summary: dict[str, Any]
    try:
        cfg = load_config(config_path)
        if args.command == "validate":
            from . import validate

            summary = validate.run(cfg)
        else:
            from . import train

            summary = train.run(cfg)
        code = contract.EXIT_OK
        summary["exitCode"] = code
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:
        code = exit_code_for(err)
        summary = {"status": "Preempted" if code == contract.EXIT_PREEMPTED else "Failed", "reason": reason_for(err), "message": str(err), "exitCode": code}
        if isinstance(err, ConfigError):
            summary["message"] = f"invalid TrainerConfig {config_path}:\n{err}"
        expected = code in (contract.EXIT_CONFIG_ERROR, contract.EXIT_DATA_ERROR, contract.EXIT_PREEMPTED) or type(err).__module__.startswith("finetune_trainer")
        if not expected:
            traceback.print_exc()  # an unexpected failure: keep the trace in the log for debugging
        print(f"{args.command} failed ({summary['reason']}): {summary['message']}", file=sys.stderr)
    if _is_main_process() or code != contract.EXIT_OK:
        write_termination_message(summary, args.termination_log)
    if _is_main_process():
        print(json.dumps(summary, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
