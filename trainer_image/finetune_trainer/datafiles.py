"""Data file types: JSON Lines, Parquet and CSV, read into plain row dicts with their position.

One reader per file type, behind the `READERS` registry (keyed by file suffix); adding a type is
one function and one registry line. Every reader yields `(where, row)`: `where` names the row
for messages (`line N of FILE` for JSON Lines, `row N of FILE` for Parquet and CSV, N counting
data rows from 1 and, for CSV, not the header), `row` is a dict, or a string saying why the row
cannot be read. Parquet and CSV are read with pyarrow (the library `datasets`' own Parquet and
CSV builders use) in record batches, so a large file is streamed, never loaded whole.

CSV values are typed by pyarrow's inference per column (a column of integers gives integers,
anything else strings); a string column keeps "NA", "null" and empty cells as strings.
The image formats of `image-classification` (`IMAGE_SUFFIXES`) are listed here too, for a
dataset laid out as `<label>/<file>`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

from .errors import DataError

RowOrProblem = dict[str, Any] | str
Reader = Callable[[pathlib.Path], Iterator[tuple[str, RowOrProblem]]]

#: Rows per pyarrow record batch (Parquet and CSV are streamed in batches of this size).
BATCH_ROWS = 4096
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


def read_jsonl(path: pathlib.Path) -> Iterator[tuple[str, RowOrProblem]]:
    """One JSON object per line; blank lines are skipped."""
    with path.open("r", encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"line {lineno} of {path.name}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    yield where, f"not valid JSON ({err.msg} at column {err.colno})"
                    continue
                yield where, obj if isinstance(obj, dict) else "expected a JSON object"
        except UnicodeDecodeError:
            raise DataError(f"dataset: {path.name} is not UTF-8 text") from None


def _batches_to_rows(path: pathlib.Path, batches: Iterator[Any]) -> Iterator[tuple[str, RowOrProblem]]:
    n = 0
    for batch in batches:
        for row in batch.to_pylist():
            n += 1
            yield f"row {n} of {path.name}", row


def read_parquet(path: pathlib.Path) -> Iterator[tuple[str, RowOrProblem]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
        batches = pf.iter_batches(batch_size=BATCH_ROWS)
        yield from _batches_to_rows(path, batches)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"dataset: {path.name} is not a readable Parquet file: {err}") from None


def read_csv(path: pathlib.Path) -> Iterator[tuple[str, RowOrProblem]]:
    import pyarrow.csv as pcsv

    try:
        reader = pcsv.open_csv(str(path), read_options=pcsv.ReadOptions(block_size=1 << 22))
        yield from _batches_to_rows(path, iter(reader))
    except (OSError, ValueError) as err:
        raise DataError(f"dataset: {path.name} is not a readable CSV file: {err}") from None


#: File suffix -> reader. `.json` is JSON Lines too (as `datasets`' json builder reads it).
READERS: dict[str, Reader] = {
    ".jsonl": read_jsonl,
    ".json": read_jsonl,
    ".parquet": read_parquet,
    ".csv": read_csv,
}


def reader_for(path: pathlib.Path) -> Reader:
    """The reader for a file by its suffix; JSON Lines for a file without a known one."""
    return READERS.get(path.suffix.lower(), read_jsonl)


def data_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Every data file under `root` (JSON Lines, Parquet, CSV), in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in READERS)


def image_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Every image under `root` (a `<label>/<file>` layout), in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
