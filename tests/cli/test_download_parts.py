"""`download` writes each file to `<file>.part`, renames it once its sha256 and size match the
manifest, and removes the `.part` on any failure; status.output.sha256 pins the manifest itself.
Unit level, with a directory as the run's output (tests/cli/test_run_local.py and
test_cluster_commands.py do the same against the real S3 server).

Run: .venv/bin/python -m pytest tests/cli/test_download_parts.py
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
from ftctl.download import download_run
from ftctl.errors import CommandFailed
from ftctl.storage import Storage, parse_location

FILES = {"adapter/adapter_model.safetensors": b"\x01weights" * 1000, "adapter/adapter_config.json": b'{"r": 8}'}


def write_run(root: pathlib.Path, files: dict[str, bytes] = FILES) -> bytes:
    """A finished run's output directory; returns its manifest's bytes."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = json.dumps({"files": [{"path": k, "sha256": hashlib.sha256(v).hexdigest(), "size": len(v)}
                                     for k, v in files.items()]}).encode()
    (root / "manifest.json").write_bytes(manifest)
    return manifest


def storage(root: pathlib.Path) -> Storage:
    return Storage(parse_location(str(root) + "/"))


def leftovers(dest: pathlib.Path) -> list[str]:
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.part"))


def test_verified_files_land_under_their_names_and_no_part_remains(tmp_path: pathlib.Path) -> None:
    manifest = write_run(tmp_path / "run")
    dest = tmp_path / "dl"
    result = download_run(storage(tmp_path / "run"), dest, title="t",
                          manifest_sha256=hashlib.sha256(manifest).hexdigest())
    assert {f.path for f in result.files} == set(FILES)
    for rel, data in FILES.items():
        assert (dest / rel).read_bytes() == data
    assert leftovers(dest) == []


def test_a_tampered_file_is_neither_kept_nor_left_as_part(tmp_path: pathlib.Path) -> None:
    write_run(tmp_path / "run")
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_bytes(b'{"r": 64}')
    dest = tmp_path / "dl"
    with pytest.raises(CommandFailed, match=r"adapter/adapter_config\.json: checksum mismatch"):
        download_run(storage(tmp_path / "run"), dest, title="t")
    assert not (dest / "adapter" / "adapter_config.json").exists()
    assert leftovers(dest) == []


def test_a_failed_transfer_removes_its_part_and_keeps_an_earlier_good_copy(tmp_path: pathlib.Path) -> None:
    write_run(tmp_path / "run")
    dest = tmp_path / "dl"
    download_run(storage(tmp_path / "run"), dest, title="t")
    good = (dest / "adapter" / "adapter_model.safetensors").read_bytes()

    class Broken(Storage):
        def download(self, relative: str, target: pathlib.Path) -> None:
            target.write_bytes(b"half of it")  # what an interrupted transfer leaves
            raise CommandFailed(f"connection reset while reading {relative}")

    with pytest.raises(CommandFailed, match="connection reset"):
        download_run(Broken(parse_location(str(tmp_path / "run") + "/")), dest, title="t")
    assert leftovers(dest) == []
    assert (dest / "adapter" / "adapter_model.safetensors").read_bytes() == good


def test_a_manifest_other_than_the_jobs_is_refused_before_any_file(tmp_path: pathlib.Path) -> None:
    original = write_run(tmp_path / "run")
    write_run(tmp_path / "run", {**FILES, "adapter/adapter_config.json": b'{"r": 16}'})  # re-written, self-consistent
    dest = tmp_path / "dl"
    with pytest.raises(CommandFailed, match=r"does not match the job's status.output.sha256 "
                                            + hashlib.sha256(original).hexdigest()[:12]):
        download_run(storage(tmp_path / "run"), dest, title="t", manifest_sha256=hashlib.sha256(original).hexdigest())
    assert not dest.exists()
