"""Images for `image-classification`: the model's image processor, row checks and pixel loading.

Preprocessing is the model's own `AutoImageProcessor` when its directory has a
`preprocessor_config.json`; otherwise (a model without one, e.g. built from a config) a plain
processor: resize to `config.image_size` (224 when the config has none), scale to [0, 1] and
normalise with mean 0.5 and std 0.5 per channel (transformers' `ViTImageProcessor` with those
settings). Either way it is saved with the output, so the trained model reloads with
`AutoImageProcessor.from_pretrained(<output>/adapter or model)`. Images are converted to RGB.

Augmentation (`dataset.augmentation`, off by default) changes training images only, each time one
is loaded, before the processor: a left-right mirror with probability 0.5 (`horizontalFlip`) and
a crop to a random area fraction in [randomCrop, 1] of the image, aspect ratio kept, at a random
position (`randomCrop`), which the processor then resizes. Draws come from one generator per rank
seeded with `hyperparameters.seed` and the rank, so a run is repeatable; a resumed run draws anew.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .config import ImageAugmentation
from .data import Example, Problems, Row
from .errors import DataError

PROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_IMAGE_SIZE = 224


class ImageInputs:
    """The image counterpart of a tokenizer, where the training loop needs one.

    `pad_token_id` is never used to pad (image batches have no tokens); `save_pretrained` writes
    the image processor next to the weights.
    """

    pad_token_id = 0

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def pixels(self, path: str, augment: Augmenter | None = None) -> torch.Tensor:
        """The preprocessed [3, H, W] tensor of one image (changed by `augment` first, if given)."""
        from PIL import Image

        with Image.open(path) as im:
            rgb = im.convert("RGB")
        if augment is not None:
            rgb = augment(rgb)
        out: torch.Tensor = self.processor(images=rgb, return_tensors="pt")["pixel_values"][0]
        return out

    def loader(self, path: str, augment: Augmenter | None = None) -> Callable[[], torch.Tensor]:
        return functools.partial(self.pixels, path, augment)

    def save_pretrained(self, dest: str) -> None:
        self.processor.save_pretrained(dest)


class Augmenter:
    """`dataset.augmentation` applied to a PIL image, with its own random generator."""

    def __init__(self, settings: ImageAugmentation, seed: int) -> None:
        self.settings = settings
        self.rng = random.Random(seed)

    def __call__(self, image: Any) -> Any:
        s = self.settings
        if s.random_crop is not None:
            side = math.sqrt(self.rng.uniform(s.random_crop, 1.0))  # area fraction -> side fraction
            w, h = max(1, round(image.width * side)), max(1, round(image.height * side))
            left, top = self.rng.randint(0, image.width - w), self.rng.randint(0, image.height - h)
            image = image.crop((left, top, left + w, top + h))
        if s.horizontal_flip and self.rng.random() < 0.5:
            from PIL import ImageOps

            image = ImageOps.mirror(image)
        return image


def augmented(examples: list[Example], inputs: ImageInputs, settings: ImageAugmentation, seed: int) -> list[Example]:
    """The training examples, each loading its image through one shared Augmenter."""
    augment = Augmenter(settings, seed)
    out = []
    for ex in examples:
        assert ex.image is not None, "augmentation needs image examples"
        out.append(dataclasses.replace(ex, pixels=inputs.loader(ex.image, augment)))
    return out


def load_image_inputs(model_dir: pathlib.Path, trust_remote_code: bool = False) -> ImageInputs:
    """The model's image processor, else the plain resize/normalise described above."""
    if (model_dir / PROCESSOR_FILE).is_file():
        from transformers import AutoImageProcessor

        try:
            return ImageInputs(AutoImageProcessor.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code))  # type: ignore[no-untyped-call]
        except Exception as err:
            raise DataError(f"model.uri: cannot load the image processor ({PROCESSOR_FILE}): {type(err).__name__}: {err}") from None
    from transformers import AutoConfig, ViTImageProcessorPil

    size = getattr(AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code), "image_size", None)
    side = size if isinstance(size, int) else DEFAULT_IMAGE_SIZE
    processor = ViTImageProcessorPil(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ImageInputs(processor)


def check_images(rows: Sequence[Row]) -> dict[str, Any]:
    """Every row's image exists and decodes; one DataError names the bad rows. Returns size
    statistics (`minWidth`, `maxWidth`, `minHeight`, `maxHeight`, `imageModes`)."""
    from PIL import Image

    problems = Problems()
    widths: list[int] = []
    heights: list[int] = []
    modes: set[str] = set()
    for row in rows:
        path = pathlib.Path(row.data["image"])
        shown = row.data.get("_uri", row.data["image"])
        if not path.is_file():
            problems.add(row.named, f"image {shown} does not exist")
            continue
        try:
            with Image.open(path) as im:
                im.load()
                widths.append(im.width)
                heights.append(im.height)
                modes.add(im.mode)
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            problems.add(row.named, f"image {shown} does not decode ({type(err).__name__}: {err})")
    problems.raise_if_any("have an unusable image")
    return {
        "minWidth": min(widths, default=0),
        "maxWidth": max(widths, default=0),
        "minHeight": min(heights, default=0),
        "maxHeight": max(heights, default=0),
        "imageModes": sorted(modes),
    }
