"""`dataset.augmentation` for image-classification: off by default; when on, training images are
mirrored / cropped at random each time they load (repeatably for a seed), and validation images
never are."""

from __future__ import annotations

import pathlib

import pytest
import torch
from finetune_trainer import data
from finetune_trainer.config import DatasetSource, ImageAugmentation, parse_config
from finetune_trainer.images import Augmenter, ImageInputs
from finetune_trainer.inputs import Prepared
from PIL import Image
from pydantic import ValidationError


def _inputs() -> ImageInputs:
    from transformers import ViTImageProcessorPil

    return ImageInputs(ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3))


@pytest.fixture
def picture(tmp_path: pathlib.Path) -> pathlib.Path:
    """16x16, left half black, right half white: a mirror turns it round, a crop shifts the edge."""
    im = Image.new("RGB", (16, 16), "white")
    im.paste((0, 0, 0), (0, 0, 8, 16))
    path = tmp_path / "half.png"
    im.save(path)
    return path


def test_horizontal_flip_mirrors_about_half_the_loads_and_repeats_for_a_seed(picture: pathlib.Path) -> None:
    inputs = _inputs()
    plain = inputs.pixels(str(picture))
    mirrored = torch.flip(plain, dims=[2])
    flips = Augmenter(ImageAugmentation(horizontal_flip=True), seed=3)
    draws = [inputs.pixels(str(picture), flips) for _ in range(200)]
    n_mirrored = sum(bool(torch.equal(d, mirrored)) for d in draws)
    assert all(torch.equal(d, plain) or torch.equal(d, mirrored) for d in draws)
    assert 70 < n_mirrored < 130, n_mirrored  # probability 0.5
    again = Augmenter(ImageAugmentation(horizontal_flip=True), seed=3)
    assert [torch.equal(inputs.pixels(str(picture), again), mirrored) for _ in range(200)] == [torch.equal(d, mirrored) for d in draws]


def test_random_crop_keeps_the_size_and_moves_the_edge(picture: pathlib.Path) -> None:
    inputs = _inputs()
    plain = inputs.pixels(str(picture))
    crops = Augmenter(ImageAugmentation(random_crop=0.3), seed=0)
    draws = [inputs.pixels(str(picture), crops) for _ in range(50)]
    assert all(d.shape == plain.shape for d in draws)  # the processor resizes the crop back
    assert sum(not torch.equal(d, plain) for d in draws) > 40
    # never a mirror: the left column stays darker than the right one
    assert all(float(d[:, :, 0].mean()) <= float(d[:, :, -1].mean()) for d in draws)


def test_only_training_examples_are_augmented(picture: pathlib.Path) -> None:
    inputs = _inputs()
    rows = [data.Row(f"labels.jsonl:{i}", {"image": str(picture), "label": "a"}) for i in range(20)]
    examples, stats = data.tokenize(rows, "image-classification", inputs, 8, ["a"])
    prepared = Prepared(rows, ["a"], examples, stats, {})
    dataset = {"uri": "s3://bucket/img/", "format": "image-classification", "validationSplit": 0.25}
    base = {"model": {"uri": "/m"}, "output": {"uri": "/o"}}
    plain = inputs.pixels(str(picture))
    train, val = prepared.split(parse_config({**base, "dataset": dataset}), inputs, rank=0)  # off by default
    assert len(val) == 5 and all(ex.pixels is not None and torch.equal(ex.pixels(), plain) for ex in train + val for _ in range(3))
    train, val = prepared.split(parse_config({**base, "dataset": {**dataset, "augmentation": {"horizontalFlip": True}}}), inputs, rank=0)
    assert all(ex.pixels is not None and torch.equal(ex.pixels(), plain) for ex in val for _ in range(5))
    assert any(ex.pixels is not None and not torch.equal(ex.pixels(), plain) for ex in train for _ in range(5))


def test_augmentation_belongs_to_image_classification() -> None:
    DatasetSource.model_validate({"uri": "s3://bucket/img/", "format": "image-classification", "augmentation": {"horizontalFlip": True, "randomCrop": 0.5}})
    with pytest.raises(ValidationError, match=r"dataset\.augmentation is only allowed with dataset\.format image-classification"):
        DatasetSource.model_validate({"uri": "s3://bucket/t.jsonl", "format": "text", "augmentation": {"horizontalFlip": True}})
    with pytest.raises(ValidationError, match="randomCrop"):
        DatasetSource.model_validate({"uri": "s3://bucket/img/", "format": "image-classification", "augmentation": {"randomCrop": 1.0}})
