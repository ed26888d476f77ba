"""One control-plane process: started in its own process group, logged to a file, stopped by PID.

Processes owned by a test session get ``PR_SET_PDEATHSIG=SIGKILL`` so that even a ``kill -9``
of the pytest process takes them down; processes started by ``python -m tests.cluster up`` are
detached (they must outlive the CLI) and are stopped later from the PIDs in ``state.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # the state field follows the ")" that closes the command name
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")


def pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class Component:
    """A named process of the control plane."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def adopt(cls, name: str, pid: int, argv: Sequence[str], log_path: Path) -> Component:
        """A handle on a process started by another Python process (from ``state.json``)."""
        comp = cls(name, argv, log_path)
        comp.pid = pid
        return comp

    def start(self, *, detach: bool) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"+ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches any children
                preexec_fn=None if detach else _die_with_parent,
                close_fds=True,
            )
        self.pid = self._proc.pid

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        # adopted: make sure the PID was not recycled by another process (the full command
        # line carries this cluster's ports and paths, so another cluster's etcd never matches)
        return pid_alive(self.pid) and pid_cmdline(self.pid) == self.argv

    def exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def signal(self, sig: int) -> None:
        if self.pid is None or not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)  # pgid == pid because of start_new_session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def wait_dead(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=0.05)
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout`` seconds."""
        if self.pid is None:
            return
        self.signal(signal.SIGTERM)
        if not self.wait_dead(timeout):
            self.signal(signal.SIGKILL)
            self.wait_dead(5.0)

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
