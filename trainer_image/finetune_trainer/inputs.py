"""From fetched dataset files to examples, the same way for `train` and `validate`.

read rows (any file type, `dataset.columns` applied) -> labels (classifiers) -> images localised
and decoded (image-classification) -> tokenize (or lazy pixel loaders).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from .config import LABELLED_FORMATS, TrainerConfig
from .data import Example, Row, TokenStats, label_names, read_rows, split, tokenize
from .recipes import decoder_start_token_id


@dataclasses.dataclass
class Prepared:
    rows: list[Row]
    labels: list[str] | None
    examples: list[Example]
    stats: TokenStats
    extra: dict[str, Any]  # `columns` (field -> column read) and, for images, `images` (sizes)

    def stats_dict(self) -> dict[str, Any]:
        """What the manifest and the validation summary record about the dataset."""
        out = {**self.stats.as_dict(), **self.extra}
        if self.labels is not None:
            out["labels"] = self.labels
        return out

    def split(self, cfg: TrainerConfig, inputs: Any, rank: int) -> tuple[list[Example], list[Example]]:
        """(training, validation) examples: the seeded split, then `dataset.augmentation` on the
        training images only (validation measures the images as they are)."""
        seed = cfg.hyperparameters.seed
        train_set, val_set = split(self.examples, cfg.dataset.validation_split, seed)
        if cfg.dataset.augmentation is not None:
            from .images import augmented

            train_set = augmented(train_set, inputs, cfg.dataset.augmentation, seed=seed * 1000 + rank)
        return train_set, val_set


def prepare(cfg: TrainerConfig, files: list[pathlib.Path], model_dir: pathlib.Path, inputs: Any, scratch: pathlib.Path) -> Prepared:
    """Rows of `files` as examples for `cfg`'s format; DataError names every bad row."""
    ds = cfg.dataset
    fmt = ds.format
    rows = read_rows(files, fmt, ds.resolved_columns())
    labels = label_names(rows, ds.labels) if fmt in LABELLED_FORMATS else None
    extra: dict[str, Any] = {"columns": ds.resolved_columns()}
    if fmt == "image-classification":
        from .images import check_images
        from .sources import localize_images

        localize_images(cfg, rows, scratch)
        extra["images"] = check_images(rows)
    start = decoder_start_token_id(model_dir, cfg) if fmt == "seq2seq" else None
    examples, stats = tokenize(rows, fmt, inputs, cfg.hyperparameters.max_seq_length, labels, decoder_start_id=start)
    return Prepared(rows, labels, examples, stats, extra)
