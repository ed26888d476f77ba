"""Images the real node needs that are not built from the project's Dockerfiles.

``pause_archive``: the pod sandbox image (containerd's ``sandbox_image``): a static C program
that sleeps until SIGTERM/SIGINT and reaps orphans, written as a one-layer ``docker save``
archive (manifest.json + config + layer.tar) that ``ctr images import`` reads. No registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

PAUSE_REF = "localhost/ftop-pause:1"

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def one_layer_archive(path: Path, ref: str, files: dict[str, tuple[bytes, int]],
                      entrypoint: list[str]) -> Path:
    """Write a ``docker save``-format archive of a one-layer image holding ``files``."""
    layer = _tar_bytes(files)
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
            "history": [{"created_by": "tests.cluster.images"}],
        },
        sort_keys=True,
    ).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        [
            {
                "Config": f"{config_digest}.json",
                "RepoTags": [ref],
                "Layers": [f"{layer_digest}/layer.tar"],
            }
        ]
    ).encode()
    archive = _tar_bytes(
        {
            f"{layer_digest}/layer.tar": (layer, 0o644),
            f"{config_digest}.json": (config, 0o644),
            "manifest.json": (manifest, 0o644),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(archive)
    return path


def pause_archive(work_dir: Path) -> Path:
    """Compile the pause program (gcc -static) and write its image archive; returns its path."""
    work_dir.mkdir(parents=True, exist_ok=True)
    src = work_dir / "pause.c"
    binary = work_dir / "pause"
    src.write_text(PAUSE_C)
    proc = subprocess.run(
        ["gcc", "-Os", "-static", "-o", str(binary), str(src)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the pause image failed:\n{proc.stderr}")
    return one_layer_archive(
        work_dir / "pause.tar", PAUSE_REF, {"pause": (binary.read_bytes(), 0o755)}, ["/pause"]
    )
