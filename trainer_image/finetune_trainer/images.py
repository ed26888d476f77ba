"""Images for `image-classification`: the model's image processor, row checks and pixel loading.

Preprocessing is the model's own `AutoImageProcessor` when its directory has a
`preprocessor_config.json`; otherwise (a model without one, e.g. built from a config) a plain
processor: resize to `config.image_size` (224 when the config has none), scale to [0, 1] and
normalise with mean 0.5 and std 0.5 per channel (transformers' `ViTImageProcessor` with those
settings). Either way it is saved with the output, so the trained model reloads with
`AutoImageProcessor.from_pretrained(<output>/adapter or model)`. Images are converted to RGB.
No augmentation is applied.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .data import Problems, Row
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

    def pixels(self, path: str) -> torch.Tensor:
        """The preprocessed [3, H, W] tensor of one image."""
        from PIL import Image

        with Image.open(path) as im:
            rgb = im.convert("RGB")
        out: torch.Tensor = self.processor(images=rgb, return_tensors="pt")["pixel_values"][0]
        return out

    def loader(self, path: str) -> Callable[[], torch.Tensor]:
        return functools.partial(self.pixels, path)

    def save_pretrained(self, dest: str) -> None:
        self.processor.save_pretrained(dest)


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
