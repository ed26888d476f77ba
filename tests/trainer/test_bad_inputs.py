"""Bad rows of the new formats fail `validate` (exit 3) naming the row, and `train` trains nothing.

An image that does not decode, an image that is missing, an empty seq2seq target and a label
outside `dataset.labels`: each is reported as `line N of FILE: ...` before any model is built.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
from finetune_trainer import contract

from tests.support.caches import CACHE_ROOT

from .helpers import run_trainer, summary_of, trainer_env, write_config, write_jsonl
from .tiny_models import build_tiny_resnet, build_tiny_t5, shapes_module


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("bad-images")
    shapes_module().write_shapes(root, per_class=3, jsonl=True)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return root


def _validate(tmp_path: pathlib.Path, work_env: dict[str, str], model: pathlib.Path, dataset: dict[str, Any], command: str = "validate") -> tuple[int, str]:
    cfg = write_config(tmp_path / "cfg.json", {
        "model": {"uri": str(model)}, "dataset": dataset,
        "hyperparameters": {"maxSteps": 2, "batchSize": 2},
        "output": {"uri": str(tmp_path / "out")},
    })
    proc = run_trainer([command, "--config", str(cfg)], trainer_env(work_env))
    return proc.returncode, str(summary_of(proc).get("message", ""))


def _image_rows(images: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (images / "labels.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("change", "expected"), [
    ({"image": "images/broken.png"}, "line 4 of bad.jsonl: image images/broken.png does not decode ("),
    ({"image": "images/nowhere.png"}, "line 4 of bad.jsonl: image images/nowhere.png does not exist"),
    ({"image": "../../etc/passwd"}, "line 4 of bad.jsonl: image ../../etc/passwd must be a path relative to the data file or an s3:// URI"),
    ({"label": "hexagon"}, "line 4 of bad.jsonl: unknown label 'hexagon' (dataset.labels: circle, square, triangle)"),
])
def test_bad_image_rows_fail_validation_naming_the_row(images: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str],
                                                       change: dict[str, str], expected: str) -> None:
    rows = _image_rows(images)
    rows[3].update(change)
    write_jsonl(images / "bad.jsonl", rows)
    try:
        rc, message = _validate(tmp_path, work_env, build_tiny_resnet(CACHE_ROOT / "models" / "tiny-resnet-8-16"), {
            "uri": str(images / "bad.jsonl"), "format": "image-classification", "labels": ["circle", "square", "triangle"]})
    finally:
        (images / "bad.jsonl").unlink()
    assert rc == contract.EXIT_DATA_ERROR, message
    assert expected in message, message
    assert "1 row(s)" in message


def test_empty_target_fails_and_nothing_is_trained(tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    t5 = build_tiny_t5(CACHE_ROOT / "models" / "tiny-t5-d32-l2")
    rows = [{"input": f"make formal: send item {i}", "target": f"please send item {i}"} for i in range(8)]
    rows[5]["target"] = "   "
    data = write_jsonl(tmp_path / "rewrite.jsonl", rows)
    dataset = {"uri": str(data), "format": "seq2seq"}
    rc, message = _validate(tmp_path, work_env, t5, dataset)
    assert rc == contract.EXIT_DATA_ERROR and "line 6 of rewrite.jsonl: field 'target' is empty" in message, message
    rc, message = _validate(tmp_path, work_env, t5, dataset, command="train")
    assert rc == contract.EXIT_DATA_ERROR and "line 6 of rewrite.jsonl: field 'target' is empty" in message, message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))  # nothing trained or written


def test_good_image_rows_validate_with_sizes_and_columns(images: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    rows = [{"picture": r["image"], "shape": r["label"]} for r in _image_rows(images)]
    write_jsonl(images / "renamed.jsonl", rows)
    cfg = write_config(tmp_path / "cfg.json", {
        "model": {"uri": str(build_tiny_resnet(CACHE_ROOT / "models" / "tiny-resnet-8-16"))},
        "dataset": {"uri": str(images / "renamed.jsonl"), "format": "image-classification", "columns": {"image": "picture", "label": "shape"}},
        "output": {"uri": str(tmp_path / "out")},
    })
    try:
        proc = run_trainer(["validate", "--config", str(cfg)], trainer_env(work_env))
    finally:
        (images / "renamed.jsonl").unlink()
    summary = summary_of(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ds = summary["dataset"]
    assert ds["rows"] == 9 and ds["labels"] == ["circle", "square", "triangle"]
    assert ds["columns"] == {"image": "picture", "label": "shape"}
    assert ds["images"]["maxWidth"] == 32 and ds["images"]["imageModes"] == ["RGB"]
