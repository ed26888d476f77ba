"""Errors the trainer reports to its user, each mapped to a contract exit code."""

from __future__ import annotations

from . import contract
from .config import ConfigError


class TrainerError(Exception):
    """A failure with a message meant for the person who wrote the FineTuneJob."""

    exit_code = contract.EXIT_TRAINING_ERROR
    reason = "TrainingFailed"


class DataError(TrainerError):
    """The model or dataset is unreachable or malformed: retrying will not help."""

    exit_code = contract.EXIT_DATA_ERROR
    reason = "DataError"


class SetupError(TrainerError):
    """The config asks for something this machine cannot do (e.g. qlora without a GPU)."""

    exit_code = contract.EXIT_CONFIG_ERROR
    reason = "InvalidConfig"


class StorageError(TrainerError):
    """Object storage refused or failed a write (retried: it may be transient)."""

    exit_code = contract.EXIT_TRAINING_ERROR
    reason = "StorageError"


class SourceUnavailable(TrainerError):
    """The model or dataset source did not answer, or answered 429/5xx: it may next time, so the
    attempt is retried (unlike DataError: a source that is missing, denied or malformed)."""

    exit_code = contract.EXIT_TRAINING_ERROR
    reason = "SourceUnavailable"


class OutputError(TrainerError):
    """The output location cannot be written for a reason a retry cannot fix (no such bucket,
    access denied, credentials rejected or missing, a read-only path): final, not retried."""

    exit_code = contract.EXIT_CONFIG_ERROR
    reason = "OutputNotWritable"


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was written (when possible) and the run stops."""

    exit_code = contract.EXIT_PREEMPTED
    reason = "Preempted"

    def __init__(self, step: int, checkpointed: bool) -> None:
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint {'written' if checkpointed else 'not written'}")
        self.step = step
        self.checkpointed = checkpointed


def exit_code_for(err: BaseException) -> int:
    if isinstance(err, ConfigError):
        return contract.EXIT_CONFIG_ERROR
    if isinstance(err, TrainerError | Preempted):
        return err.exit_code
    return contract.EXIT_TRAINING_ERROR


def reason_for(err: BaseException) -> str:
    if isinstance(err, ConfigError):
        return "InvalidConfig"
    if isinstance(err, TrainerError | Preempted):
        return err.reason
    return "TrainingFailed"
