"""JSONL datasets: parse rows per format, tokenize, split, pack and batch.

Formats (one JSON object per line):
  text               {"text": "..."}                                  loss on every token
  prompt-completion  {"prompt": "...", "completion": "..."}           loss on the completion
  chat               {"messages": [{"role": "user", "content": "..."}, ...]}
                     rendered with the tokenizer's chat template; loss on assistant tokens only
  classification     {"text": "...", "label": 0 | "positive"}         sequence-classification head

A row that does not parse is reported with its file and line number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .errors import DataError

IGNORE_INDEX = -100
MAX_REPORTED_ERRORS = 10


@dataclasses.dataclass(frozen=True)
class Row:
    """One parsed line: where it came from and its content."""

    source: str  # "file.jsonl:LINE"
    data: dict[str, Any]


@dataclasses.dataclass
class Example:
    """A tokenized row. `labels` is per-token (causal LM) or one class id (classification)."""

    input_ids: list[int]
    labels: list[int] | int
    source: str = ""


# --- parsing ---------------------------------------------------------------------------------


def _check_row(obj: Any, fmt: str) -> str | None:
    """What is wrong with a row for its format, or None."""
    if not isinstance(obj, dict):
        return "expected a JSON object"

    def text_field(name: str) -> str | None:
        v = obj.get(name)
        if v is None:
            return f"missing field {name!r}"
        if not isinstance(v, str):
            return f"field {name!r} must be a string, not {type(v).__name__}"
        if not v.strip():
            return f"field {name!r} is empty"
        return None

    if fmt == "text":
        return text_field("text")
    if fmt == "prompt-completion":
        return text_field("prompt") or text_field("completion")
    if fmt == "classification":
        problem = text_field("text")
        if problem:
            return problem
        label = obj.get("label")
        if label is None:
            return "missing field 'label'"
        if isinstance(label, bool) or not isinstance(label, int | str):
            return f"field 'label' must be an integer or a string, not {type(label).__name__}"
        if isinstance(label, int) and label < 0:
            return "field 'label' must not be negative"
        return None
    if fmt == "chat":
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "field 'messages' must be a non-empty list"
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return f"messages[{i}] must be an object with string 'role' and 'content'"
        if not any(m["role"] == "assistant" for m in msgs):
            return "no message with role 'assistant' (nothing to learn from)"
        return None
    return f"unknown format {fmt!r}"


def read_rows(files: Sequence[pathlib.Path], fmt: str) -> list[Row]:
    """Parse every line of every file; raise one DataError listing the first bad rows."""
    rows: list[Row] = []
    problems: list[str] = []
    bad = 0
    for path in files:
        with path.open("r", encoding="utf-8", errors="strict") as f:
            try:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    where = f"{path.name}:{lineno}"
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        problem: str | None = f"not valid JSON ({err.msg} at column {err.colno})"
                    else:
                        problem = _check_row(obj, fmt)
                    if problem:
                        bad += 1
                        if len(problems) < MAX_REPORTED_ERRORS:
                            problems.append(f"line {lineno} of {path.name}: {problem}")
                        continue
                    rows.append(Row(where, obj))
            except UnicodeDecodeError:
                raise DataError(f"dataset: {path.name} is not UTF-8 text") from None
    if problems:
        more = f" (and {bad - len(problems)} more)" if bad > len(problems) else ""
        raise DataError(f"dataset: {bad} row(s) do not match format {fmt!r}{more}:\n" + "\n".join(problems))
    if not rows:
        raise DataError("dataset: no rows")
    return rows


# --- tokenization ----------------------------------------------------------------------------


def label_names(rows: Sequence[Row]) -> list[str]:
    """Class names in id order: integers keep their value, strings are sorted."""
    labels = [r.data["label"] for r in rows]
    if all(isinstance(v, int) for v in labels):
        return [str(i) for i in range(max(labels) + 1)]
    if any(isinstance(v, int) for v in labels):
        raise DataError("dataset: 'label' mixes integers and strings")
    return sorted({str(v) for v in labels})


@dataclasses.dataclass
class TokenStats:
    rows: int = 0
    tokens: int = 0
    min_tokens: int = 0
    max_tokens: int = 0
    mean_tokens: float = 0.0
    longer_than_max: int = 0
    longer_examples: list[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "tokens": self.tokens,
            "minTokens": self.min_tokens,
            "maxTokens": self.max_tokens,
            "meanTokens": round(self.mean_tokens, 2),
            "rowsLongerThanMaxSeqLength": self.longer_than_max,
            "longerRowsSample": self.longer_examples,
        }


def tokenize(rows: Sequence[Row], fmt: str, tokenizer: Any, max_len: int, labels: list[str] | None = None) -> tuple[list[Example], TokenStats]:
    """Tokenize rows (truncating to max_len) and measure their untruncated lengths."""
    examples: list[Example] = []
    lengths: list[int] = []
    stats = TokenStats()
    for row in rows:
        if fmt == "classification":
            assert labels is not None
            ids = tokenizer(row.data["text"], add_special_tokens=True)["input_ids"]
            label = labels.index(str(row.data["label"]))
            ex = Example(ids, label, row.source)
        else:
            ex = _causal_example(row, fmt, tokenizer)
        lengths.append(len(ex.input_ids))
        if len(ex.input_ids) > max_len:
            stats.longer_than_max += 1
            if len(stats.longer_examples) < MAX_REPORTED_ERRORS:
                stats.longer_examples.append(f"{row.source} ({len(ex.input_ids)} tokens)")
            ex.input_ids = ex.input_ids[:max_len]
            if isinstance(ex.labels, list):
                ex.labels = ex.labels[:max_len]
        if isinstance(ex.labels, list) and all(v == IGNORE_INDEX for v in ex.labels):
            continue  # truncation removed every trained token: nothing to learn from this row
        examples.append(ex)
    stats.rows = len(rows)
    stats.tokens = sum(lengths)
    stats.min_tokens = min(lengths) if lengths else 0
    stats.max_tokens = max(lengths) if lengths else 0
    stats.mean_tokens = stats.tokens / len(lengths) if lengths else 0.0
    if not examples:
        raise DataError(f"dataset: no row keeps a trained token within maxSeqLength {max_len}")
    return examples, stats


def _causal_example(row: Row, fmt: str, tokenizer: Any) -> Example:
    """Token ids and labels; loss only on the trained span (all, completion, assistant turns)."""
    d = row.data
    if fmt == "text":
        text, spans = d["text"], [(0, len(d["text"]))]
    elif fmt == "prompt-completion":
        text = d["prompt"] + d["completion"]
        spans = [(len(d["prompt"]), len(text))]
    else:
        text, spans = _render_chat(row, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [
        tok if any(s <= start < e for s, e in spans) and end > start else IGNORE_INDEX
        for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, tokenizer.bos_token_id)
        labels.insert(0, IGNORE_INDEX)
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id if fmt != "chat" or labels[-1] != IGNORE_INDEX else IGNORE_INDEX)
    return Example(ids, labels, row.source)


def _render_chat(row: Row, tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as text and the character spans of its assistant turns.

    Each turn's span is found by rendering the conversation up to that turn: the template must
    render prefixes as prefixes (true of common templates).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("dataset.format chat: the model's tokenizer has no chat template (tokenizer_config.json 'chat_template')")
    msgs = row.data["messages"]
    try:
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        spans = []
        prev = 0
        for i, m in enumerate(msgs):
            upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
            if not full.startswith(upto):
                raise DataError(f"{row.source}: the chat template does not render turns incrementally; cannot find assistant tokens")
            if m["role"] == "assistant":
                start = upto.find(m["content"], prev)
                spans.append((start if start >= 0 else prev, len(upto)))
            prev = len(upto)
    except DataError:
        raise
    except Exception as err:  # jinja errors from the template (e.g. role order rules)
        raise DataError(f"{row.source}: the chat template rejected this conversation: {err}") from None
    return str(full), spans


# --- split, pack, batch ----------------------------------------------------------------------


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A deterministic train/validation split (validation empty when fraction is 0)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = round(len(examples) * fraction)
    if fraction > 0 and n_val == 0 and len(examples) > 1:
        n_val = 1
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    if not train:
        raise DataError("dataset: no training rows left after the validation split")
    return train, val


def pack(examples: list[Example], max_len: int) -> list[Example]:
    """Concatenate causal-LM examples and cut them into blocks of max_len tokens.

    Blocks hold no padding, so every computed token is a trained or context token. Attention
    crosses example boundaries within a block (the examples end with EOS), as in the classic
    `group_texts` recipe.
    """
    blocks: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        assert isinstance(ex.labels, list)
        ids.extend(ex.input_ids)
        labels.extend(ex.labels)
        while len(ids) >= max_len:
            blocks.append(Example(ids[:max_len], labels[:max_len], "packed"))
            ids, labels = ids[max_len:], labels[max_len:]
    if ids and any(v != IGNORE_INDEX for v in labels):
        blocks.append(Example(ids, labels, "packed"))
    return blocks


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example in the batch."""
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ex in enumerate(batch):
        ids[i, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        mask[i, : len(ex.input_ids)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if isinstance(batch[0].labels, int):
        out["labels"] = torch.tensor([ex.labels for ex in batch], dtype=torch.long)
    else:
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(batch):
            assert isinstance(ex.labels, list)
            labels[i, : len(ex.labels)] = torch.tensor(ex.labels)
        out["labels"] = labels
    return out


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training is in the data: the next micro-batch to run."""

    epoch: int
    micro_step: int


class Batches:
    """Deterministic, resumable micro-batches for one rank.

    Every epoch shuffles with (seed, epoch); the order is padded by wrapping so every rank runs
    the same number of micro-batches, and each rank takes its strided share.
    """

    def __init__(self, examples: list[Example], batch_size: int, rank: int, world_size: int, seed: int, pad_id: int) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pad_id = pad_id
        per_step = batch_size * world_size
        self.micro_steps_per_epoch = max(1, math.ceil(len(examples) / per_step))

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        need = self.micro_steps_per_epoch * self.batch_size * self.world_size
        while len(order) < need:
            order += order[: need - len(order)]
        return order

    def iterate(self, start: Position) -> Iterator[tuple[Position, dict[str, torch.Tensor]]]:
        """(position of this batch, batch) from `start` on, epoch after epoch, forever."""
        epoch, micro = start.epoch, start.micro_step
        while True:
            order = self._order(epoch)
            per_step = self.batch_size * self.world_size
            for m in range(micro, self.micro_steps_per_epoch):
                chunk = order[m * per_step : (m + 1) * per_step]
                mine = chunk[self.rank :: self.world_size]
                yield Position(epoch, m), collate([self.examples[i] for i in mine], self.pad_id)
            epoch, micro = epoch + 1, 0


def eval_batches(examples: list[Example], batch_size: int, rank: int, world_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's share of the validation set (no wrapping: each example counted once)."""
    mine = examples[rank::world_size]
    for i in range(0, len(mine), batch_size):
        yield collate(mine[i : i + batch_size], pad_id)
