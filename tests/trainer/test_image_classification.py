"""Format `image-classification`: a tiny ViT and a tiny ResNet (built from configs) on rendered shapes.

The images come from examples/data/make_shapes.py (circle / square / triangle, 32x32, PNG and
JPEG), as a `<label>/<file>` layout for the ViT and as labels.jsonl rows for the ResNet. Both
must reach an accuracy well above chance (1/3), reported in metrics.jsonl and the summary; the
saved model / adapter reloads with its new 3-label head and reproduces the trainer's logits.
The ViT has no preprocessor_config.json (the trainer's plain resize/normalise is used and saved);
the ResNet brings its own processor and a 1000-label head that the new labels replace, and trains
with the example's augmentation (flips and crops of the training images).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import torch
from finetune_trainer import contract

from tests.support.caches import CACHE_ROOT

from .helpers import read_metrics_history, run_trainer, summary_of, trainer_env, write_config
from .tiny_models import build_tiny_resnet, build_tiny_vit, shapes_module

pytestmark = pytest.mark.slow
LABELS = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("shapes")
    make = shapes_module()
    make.write_shapes(root / "folders", per_class=200, seed=1)
    make.write_shapes(root / "jsonl", per_class=100, seed=2, jsonl=True)
    return {"folders": root / "folders", "jsonl": root / "jsonl"}


def _train(name: str, model: pathlib.Path, dataset: pathlib.Path, method: dict[str, Any], hp: dict[str, Any],
           tmp_path: pathlib.Path, work_env: dict[str, str], augmentation: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], pathlib.Path]:
    out = tmp_path / f"out-{name}"
    extra = {"augmentation": augmentation} if augmentation else {}
    cfg = write_config(tmp_path / f"{name}.json", {
        "jobName": name, "model": {"uri": str(model)},
        "dataset": {"uri": str(dataset), "format": "image-classification", "validationSplit": 0.15, **extra},
        "method": method,
        "hyperparameters": {"batchSize": 32, "warmupRatio": 0.1, "evalEverySteps": 40, **hp},
        "checkpoint": {"everySteps": 1000},
        "output": {"uri": str(out)},
    })
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env(work_env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return summary_of(proc), json.loads((out / contract.MANIFEST_NAME).read_text()), out


def _pixels(processor_dir: pathlib.Path, paths: list[pathlib.Path]) -> torch.Tensor:
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(processor_dir))  # saved with the output
    return processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]  # type: ignore[no-any-return]


def test_tiny_vit_full_learns_shapes_and_reloads(shapes: dict[str, pathlib.Path], tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    from transformers import AutoModelForImageClassification

    vit = build_tiny_vit(CACHE_ROOT / "models" / "tiny-vit-p4-h48")
    summary, manifest, out = _train("vit", vit, shapes["folders"], {"type": "full"}, {"maxSteps": 120, "learningRate": 0.002}, tmp_path, work_env)
    history = read_metrics_history(out / contract.METRICS_HISTORY_NAME)
    accuracies = [r["evalAccuracy"] for r in history if "evalAccuracy" in r]
    assert summary["evalAccuracy"] == accuracies[-1] >= 0.6, accuracies  # chance is 1/3
    assert manifest["dataset"]["labels"] == LABELS and manifest["dataset"]["rows"] == 600
    assert manifest["dataset"]["images"] == {"minWidth": 32, "maxWidth": 32, "minHeight": 32, "maxHeight": 32, "imageModes": ["RGB"]}

    model = AutoModelForImageClassification.from_pretrained(str(out / "model")).eval()
    assert model.config.id2label == dict(enumerate(LABELS))  # the new head, named
    check = manifest["outputCheck"]
    with torch.no_grad():
        logits = model(pixel_values=_pixels(out / "model", [shapes["folders"] / s for s in check["images"]])).logits
    assert torch.allclose(logits, torch.tensor(check["logits"]), atol=1e-4), (logits, check["logits"])


def test_tiny_resnet_lora_learns_shapes_and_adapter_reloads(shapes: dict[str, pathlib.Path], tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    resnet = build_tiny_resnet(CACHE_ROOT / "models" / "tiny-resnet-8-16")
    summary, manifest, out = _train("resnet", resnet, shapes["jsonl"], {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                                    {"maxSteps": 60, "learningRate": 0.01}, tmp_path, work_env,
                                    augmentation={"horizontalFlip": True, "randomCrop": 0.7})  # as examples/image-classification.yaml
    assert summary["evalAccuracy"] >= 0.8, summary
    assert manifest["method"]["resolvedTargetModules"] == ["convolution"]  # LoRA on the convolutions, head saved whole
    adapter = out / "adapter"
    labels = json.loads((adapter / "labels.json").read_text())
    assert labels == LABELS

    base = AutoModelForImageClassification.from_pretrained(
        str(resnet), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    rows = [json.loads(line) for line in (shapes["jsonl"] / "labels.jsonl").read_text().splitlines()]
    paths = [shapes["jsonl"] / rows[int(src.rsplit(":", 1)[1]) - 1]["image"] for src in manifest["outputCheck"]["images"]]
    with torch.no_grad():
        logits = model(pixel_values=_pixels(adapter, paths)).logits
    assert logits.shape[-1] == 3
    assert torch.allclose(logits, torch.tensor(manifest["outputCheck"]["logits"]), atol=1e-4)
