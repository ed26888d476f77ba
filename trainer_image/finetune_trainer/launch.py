"""torchrun, with the trainer's contract exit codes on the way out.

    python -m finetune_trainer.launch [torchrun options] -m finetune_trainer train --config cfg.yaml

torchrun itself exits 1 whenever a worker fails and dies of SIGTERM with its own exception, so a
pod running plain `torchrun -m finetune_trainer` reports exit code 1 for a bad config, a broken
dataset or a preemption alike. The workers also write their JSON summary (with `exitCode`) to the
termination message file; this wrapper runs torchrun in-process with the same arguments and
PET_* environment, then exits with the code the workers recorded there.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import tempfile

from . import contract


def recorded_exit_code(path: str) -> int | None:
    try:
        code = json.loads(pathlib.Path(path).read_text()).get("exitCode")
    except (OSError, ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    path = os.environ.get(contract.ENV_TERMINATION_MESSAGE_PATH)
    if not path:
        if os.path.exists(contract.TERMINATION_MESSAGE_PATH):
            path = contract.TERMINATION_MESSAGE_PATH
        else:
            path = os.path.join(tempfile.mkdtemp(prefix="finetune-"), "termination-log")
        os.environ[contract.ENV_TERMINATION_MESSAGE_PATH] = path  # the workers inherit it
    if os.path.exists(path):
        pathlib.Path(path).write_text("")  # a summary from an earlier attempt must not count

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun_main

    code = 0
    try:
        torchrun_main(argv)
    except SignalException as err:
        code = recorded_exit_code(path) or (128 + int(err.sigval))
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except Exception:
        code = contract.EXIT_TRAINING_ERROR
    if code != 0:
        code = recorded_exit_code(path) or code
    return code


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
