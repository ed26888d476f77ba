"""Where the control-plane binaries live, and building them when they are missing.

The build itself is ``hack/build-control-plane.sh`` (pinned versions, cache outside the repo).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"
COMMANDS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "kwok",
    "helm",
    "coredns",
    "prometheus",
)


class BuildError(RuntimeError):
    """The control-plane build failed or produced no binaries."""


def bin_dir() -> Path:
    """The versioned bin directory the build script writes to (it may not exist yet)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-bin"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def missing(directory: Path) -> list[str]:
    """Names of the commands not yet built into ``directory``."""
    return [c for c in COMMANDS if not os.access(directory / c, os.X_OK)]


def ensure_built() -> Path:
    """Return the bin directory, running the build script first if anything is missing."""
    directory = bin_dir()
    if missing(directory):
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False)
        if proc.returncode != 0:
            raise BuildError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
        still = missing(directory)
        if still:
            raise BuildError(f"{BUILD_SCRIPT} did not produce {', '.join(still)} in {directory}")
    return directory


def tool(name: str) -> Path:
    """Path of one built command (``kubectl``, ``helm``, ...), building if needed."""
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}; built commands: {', '.join(COMMANDS)}")
    return ensure_built() / name
