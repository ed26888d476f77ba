"""Datasets: parse rows per format, tokenize, split, pack and batch.

Rows come from JSON Lines, Parquet or CSV files (`datafiles.py`); `dataset.columns` maps the
format's fields to the data's own column names. Formats (fields of a row):
  text                  {"text": "..."}                                  loss on every token
  prompt-completion     {"prompt": "...", "completion": "..."}           loss on the completion
  chat                  {"messages": [{"role": "user", "content": "..."}, ...]}
                        rendered with the tokenizer's chat template; loss on assistant tokens only
  classification        {"text": "...", "label": 0 | "positive"}         sequence-classification head
  seq2seq               {"input": "...", "target": "..."}                encoder-decoder; loss on every
                        target token, teacher-forced from the model's decoder start token
  image-classification  {"image": "rel/path.png" | "s3://...", "label": ...} (or a `<label>/<file>`
                        layout of images); image-classification head, pixels from `images.py`

Chat masks. A template with `{% generation %}` blocks marks the assistant tokens itself
(transformers' `return_assistant_tokens_mask`): exactly those tokens are trained, nothing is
added. Otherwise (the fallback) the conversation is rendered once and each assistant message's
content is found in that render, in order: as written, else trimmed, else without a leading
`<think>...</think>` block (templates that re-render history, like Qwen3's, drop the reasoning
of earlier turns). Trained: the content and the end-of-turn marker right after it when that
marker is a special token of the tokenizer (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`); never
the role header before it nor the newline after the marker. A message whose content is not in
the render is an error (the template changed the assistant's text). EOS is appended and trained
only when the conversation ends with an assistant turn the template did not close with such a
trained special token. Text and prompt-completion rows get a BOS (if missing) and a trained EOS.

Lengths. Rows longer than maxSeqLength are cut: text and classification from the right,
prompt-completion and chat from the left (a leading BOS stays), so the end of the last answer is
kept. A row left with no trained token is dropped and counted.

A row that does not parse is reported with its file and line number.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import pathlib
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .config import FORMAT_FIELDS
from .datafiles import IMAGE_SUFFIXES, reader_for
from .errors import DataError

IGNORE_INDEX = -100
MAX_REPORTED_ERRORS = 10


@dataclasses.dataclass(frozen=True)
class Row:
    """One parsed line: where it came from and its content."""

    source: str  # "file.jsonl:LINE"
    data: dict[str, Any]
    where: str = ""  # for messages: "line N of FILE" / "row N of FILE"

    @property
    def named(self) -> str:
        """How messages name the row."""
        return self.where or self.source


@dataclasses.dataclass
class Example:
    """A tokenized row. `labels` is per-token (causal LM, seq2seq) or one class id (classifiers).

    Causal LM: `labels[i]` is the target of position i-1 (the loss shifts them). Seq2seq:
    `input_ids` feed the encoder, `labels[i]` is the target of decoder position i (no shift) and
    `decoder_input_ids` are the labels moved right behind the decoder start token. Images:
    `input_ids` is empty and `pixels()` gives the preprocessed image tensor (loaded lazily, so a
    dataset never sits in memory as pixels).
    """

    input_ids: list[int]
    labels: list[int] | int
    source: str = ""
    #: Packed blocks only: positions restart at 0 for every document in the block.
    position_ids: list[int] | None = None
    decoder_input_ids: list[int] | None = None
    pixels: Callable[[], torch.Tensor] | None = None
    #: Images only: the local file `pixels` loads.
    image: str | None = None


# --- parsing ---------------------------------------------------------------------------------


def _check_row(obj: Any, fmt: str) -> str | None:
    """What is wrong with a row for its format, or None."""
    if not isinstance(obj, dict):
        return "expected a JSON object"

    def label_field() -> str | None:
        label = obj.get("label")
        if label is None:
            return "missing field 'label'"
        if isinstance(label, bool) or not isinstance(label, int | str):
            return f"field 'label' must be an integer or a string, not {type(label).__name__}"
        if isinstance(label, int) and label < 0:
            return "field 'label' must not be negative"
        if isinstance(label, str) and not label.strip():
            return "field 'label' is empty"
        return None

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
        return text_field("text") or label_field()
    if fmt == "seq2seq":
        return text_field("input") or text_field("target")
    if fmt == "image-classification":
        return text_field("image") or label_field()
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


class Problems:
    """Bad rows, collected so that one DataError names the first `MAX_REPORTED_ERRORS` of them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def add(self, where: str, problem: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_REPORTED_ERRORS:
            self.lines.append(f"{where}: {problem}")

    def raise_if_any(self, what: str) -> None:
        if self.count:
            more = f" (and {self.count - len(self.lines)} more)" if self.count > len(self.lines) else ""
            raise DataError(f"dataset: {self.count} row(s) {what}{more}:\n" + "\n".join(self.lines))


def _apply_columns(obj: dict[str, Any], columns: Mapping[str, str]) -> str | None:
    """Rename the data's columns to the format's fields (in place); what is missing, or None."""
    for field, column in columns.items():
        if column == field:
            continue
        if column not in obj:
            return f"missing column {column!r} (dataset.columns.{field})"
        obj[field] = obj.pop(column)
    return None


def _source(where: str) -> str:
    """'line 3 of a.jsonl' / 'row 3 of a.parquet' -> 'a.jsonl:3' (a row's short name)."""
    _, n, _, name = where.split(" ", 3)
    return f"{name}:{n}"


def read_rows(files: Sequence[pathlib.Path], fmt: str, columns: Mapping[str, str] | None = None) -> list[Row]:
    """Parse every row of every file (JSON Lines, Parquet, CSV); one DataError lists the first bad rows.

    `columns` maps the format's fields to the data's column names. For image-classification a
    list of image files (no data file) is a `<label>/<file>` layout: each image's directory
    name is its label. An image's path in a row stays as written (see `images.localize`).
    """
    if fmt not in FORMAT_FIELDS:
        raise DataError(f"dataset.format: unknown format {fmt!r}")
    if fmt == "image-classification" and files and all(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        return [Row(f"{p.parent.name}/{p.name}", {"image": str(p), "label": p.parent.name}) for p in files]
    rows: list[Row] = []
    problems = Problems()
    for path in files:
        for where, obj in reader_for(path)(path):
            problem = obj if isinstance(obj, str) else (_apply_columns(obj, columns or {}) or _check_row(obj, fmt))
            if problem:
                problems.add(where, problem)
                continue
            assert isinstance(obj, dict)
            if fmt == "image-classification":
                obj["_dir"] = str(path.parent)  # relative image paths are relative to their data file
            rows.append(Row(_source(where), obj, where))
    problems.raise_if_any(f"do not match format {fmt!r}")
    if not rows:
        raise DataError("dataset: no rows")
    return rows


# --- tokenization ----------------------------------------------------------------------------


def label_names(rows: Sequence[Row], declared: Sequence[str] | None = None) -> list[str]:
    """Class names in id order: `declared` (dataset.labels), else integers keep their value and
    strings are sorted. With `declared`, a row whose label is not one of them is an error."""
    if declared is not None:
        problems = Problems()
        for r in rows:
            v = r.data["label"]
            if isinstance(v, int) and v >= len(declared):
                problems.add(r.named, f"label {v} is not a class id of dataset.labels ({len(declared)} labels)")
            elif isinstance(v, str) and v not in declared:
                problems.add(r.named, f"unknown label {v!r} (dataset.labels: {', '.join(declared)})")
        problems.raise_if_any("have an unknown label")
        return list(declared)
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
    rows_dropped: int = 0  # causal-LM rows with no trained token left (after truncation): not used
    truncated_from: str = "right"  # the end over-long rows lose ("left" keeps the answer)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "tokens": self.tokens,
            "minTokens": self.min_tokens,
            "maxTokens": self.max_tokens,
            "meanTokens": round(self.mean_tokens, 2),
            "rowsLongerThanMaxSeqLength": self.longer_than_max,
            "longerRowsSample": self.longer_examples,
            "rowsDroppedNoTrainedTokens": self.rows_dropped,
        }

    def truncation_summary(self, max_len: int) -> str:
        """One log phrase: how many rows were cut to max_len (and from which end), how many dropped."""
        side = "from the left, keeping the answer" if self.truncated_from == "left" else "from the right"
        return (
            f"{self.longer_than_max} rows truncated to {max_len} tokens ({side}), "
            f"{self.rows_dropped} rows dropped with no trained token left"
        )


#: Formats whose over-long rows are cut from the left, so the answer they end with is kept.
LEFT_TRUNCATED_FORMATS = frozenset({"prompt-completion", "chat"})


def label_id(value: int | str, labels: Sequence[str]) -> int:
    """A row's class id: an integer label is one, a name is looked up."""
    return value if isinstance(value, int) else list(labels).index(value)


def tokenize(
    rows: Sequence[Row], fmt: str, tokenizer: Any, max_len: int, labels: list[str] | None = None, *, decoder_start_id: int | None = None
) -> tuple[list[Example], TokenStats]:
    """Tokenize rows, truncate them to max_len and measure their untruncated lengths.

    Text, classification and seq2seq rows lose their end (a seq2seq input and target each keep
    max_len tokens); prompt-completion and chat rows lose their beginning (a leading BOS stays).
    A causal-LM row left without a trained token (a target after the first position) is dropped
    and counted in `rows_dropped`. Image rows (`tokenizer` is then an `images.ImageInputs`) have
    no tokens: their examples load pixels on demand.
    """
    if fmt == "image-classification":
        assert labels is not None
        image_examples = [
            Example([], label_id(r.data["label"], labels), r.source, pixels=tokenizer.loader(r.data["image"]), image=r.data["image"]) for r in rows
        ]
        return image_examples, TokenStats(rows=len(rows))
    if fmt == "seq2seq" and decoder_start_id is None:
        raise DataError("model.uri: the model's config has no decoder_start_token_id (is it an encoder-decoder model?)")
    examples: list[Example] = []
    lengths: list[int] = []
    left = fmt in LEFT_TRUNCATED_FORMATS
    stats = TokenStats(truncated_from="left" if left else "right")
    for row in rows:
        if fmt == "classification":
            assert labels is not None
            ids = tokenizer(row.data["text"], add_special_tokens=True)["input_ids"]
            ex = Example(ids, label_id(row.data["label"], labels), row.source)
        elif fmt == "seq2seq":
            assert decoder_start_id is not None
            ex = _seq2seq_example(row, tokenizer, max_len, decoder_start_id, stats)
        else:
            ex = _causal_example(row, fmt, tokenizer)
        lengths.append(len(ex.input_ids) + (len(ex.labels) if ex.decoder_input_ids is not None and isinstance(ex.labels, list) else 0))
        if len(ex.input_ids) > max_len:
            stats.longer_than_max += 1
            if len(stats.longer_examples) < MAX_REPORTED_ERRORS:
                stats.longer_examples.append(f"{row.source} ({len(ex.input_ids)} tokens)")
            if left:
                _truncate_left(ex, max_len, tokenizer.bos_token_id)
            else:
                ex.input_ids = ex.input_ids[:max_len]
                if isinstance(ex.labels, list):
                    ex.labels = ex.labels[:max_len]
        if not trains_something(ex):
            stats.rows_dropped += 1  # nothing to learn: the first position is never a target
            continue
        examples.append(ex)
    stats.rows = len(rows)
    stats.tokens = sum(lengths)
    stats.min_tokens = min(lengths) if lengths else 0
    stats.max_tokens = max(lengths) if lengths else 0
    stats.mean_tokens = stats.tokens / len(lengths) if lengths else 0.0
    if not examples:
        raise DataError(f"dataset: no row keeps a trained token within maxSeqLength {max_len}")
    return examples, stats


def _seq2seq_example(row: Row, tokenizer: Any, max_len: int, decoder_start_id: int, stats: TokenStats) -> Example:
    """Encoder ids of the input; every target token trained, fed back shifted behind the decoder
    start token (teacher forcing). Both sides get the tokenizer's special tokens (T5: `</s>`).
    A target longer than max_len is cut from the right (its input is cut by `tokenize`)."""
    ids = list(tokenizer(row.data["input"], add_special_tokens=True)["input_ids"])
    target = list(tokenizer(text_target=row.data["target"], add_special_tokens=True)["input_ids"])
    if len(target) > max_len and len(ids) <= max_len:  # an over-long input is counted by `tokenize`
        stats.longer_than_max += 1
        if len(stats.longer_examples) < MAX_REPORTED_ERRORS:
            stats.longer_examples.append(f"{row.source} (target {len(target)} tokens)")
    target = target[:max_len]
    return Example(ids, target, row.source, decoder_input_ids=[decoder_start_id, *target[:-1]])


def _truncate_left(ex: Example, max_len: int, bos_id: int | None) -> None:
    """Keep the last tokens of a causal-LM example (and its leading BOS, if it has one)."""
    assert isinstance(ex.labels, list)
    keep = 1 if max_len > 1 and bos_id is not None and ex.input_ids[:1] == [bos_id] else 0
    cut = len(ex.input_ids) - (max_len - keep)
    ex.input_ids = ex.input_ids[:keep] + ex.input_ids[cut:]
    ex.labels = ex.labels[:keep] + ex.labels[cut:]


def _causal_example(row: Row, fmt: str, tokenizer: Any) -> Example:
    """Token ids and labels; loss only on the trained span (all, completion, assistant turns)."""
    if fmt == "chat":
        return _chat_example(row, tokenizer)
    d = row.data
    if fmt == "text":
        text, spans = d["text"], [(0, len(d["text"]))]
    else:
        text = d["prompt"] + d["completion"]
        spans = [(len(d["prompt"]), len(text))]
    ids, labels = _encode_spans(text, spans, tokenizer)
    _prepend_bos(ids, labels, tokenizer)
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos)
    return Example(ids, labels, row.source)


def _encode_spans(text: str, spans: Sequence[tuple[int, int]], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids of `text` (no special tokens added) and labels: a token is trained if it overlaps a span."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [
        tok if end > start and any(start < e and s < end for s, e in spans) else IGNORE_INDEX
        for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids, labels


def _prepend_bos(ids: list[int], labels: list[int], tokenizer: Any) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
        labels.insert(0, IGNORE_INDEX)


_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _chat_example(row: Row, tokenizer: Any) -> Example:
    """A conversation's ids; trained: what the template's generation blocks mark, else `_render_chat`."""
    if _GENERATION_BLOCK.search(_chat_template(tokenizer)):
        enc = _apply_template(row, tokenizer, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids = [int(t) for t in enc["input_ids"]]
        labels = [t if m else IGNORE_INDEX for t, m in zip(ids, enc["assistant_masks"], strict=True)]
        _prepend_bos(ids, labels, tokenizer)
        return Example(ids, labels, row.source)  # exactly the template's tokens and marks
    text, spans, closed = _render_chat(row, tokenizer)
    ids, labels = _encode_spans(text, spans, tokenizer)
    _prepend_bos(ids, labels, tokenizer)
    eos = tokenizer.eos_token_id
    if eos is not None and row.data["messages"][-1]["role"] == "assistant" and not closed:
        # The template does not close the answer with a trained end-of-turn token: teach EOS.
        if ids and ids[-1] == eos:
            labels[-1] = eos
        else:
            ids.append(eos)
            labels.append(eos)
    return Example(ids, labels, row.source)


def _chat_template(tokenizer: Any) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("dataset.format chat: the model's tokenizer has no chat template (tokenizer_config.json 'chat_template')")
    try:
        return str(tokenizer.get_chat_template())
    except Exception:  # several named templates and no default: apply_chat_template reports it
        return str(tokenizer.chat_template)


def _apply_template(row: Row, tokenizer: Any, **kwargs: Any) -> Any:
    try:
        return tokenizer.apply_chat_template(row.data["messages"], **kwargs)
    except Exception as err:  # jinja errors from the template (e.g. role order rules)
        raise DataError(f"{row.source}: the chat template rejected this conversation: {err}") from None


def _render_chat(row: Row, tokenizer: Any) -> tuple[str, list[tuple[int, int]], bool]:
    """The conversation rendered once, the character spans to train, and whether the last
    assistant turn's span ends with a special end-of-turn token.

    Each assistant message's content is looked up in the full render, in order: after the
    previous messages and, where the template has a generation prompt, after the assistant header
    (so an answer like "a" is not found inside "assistant"). The span is the content plus a
    special token right after it (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`).
    """
    msgs = row.data["messages"]
    full = str(_apply_template(row, tokenizer, tokenize=False))
    header = _assistant_header(row, tokenizer)
    markers = _end_of_turn_markers(tokenizer)
    spans: list[tuple[int, int]] = []
    closed = False
    floor = hint = 0  # end of the previous assistant span; end of the latest message found
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            found = _find_content(full, m["content"], hint)
            hint = found[1] if found else hint
            continue
        starts = [hint, floor]
        h = full.find(header, hint) if header else -1
        if h >= 0:
            starts.insert(0, h + len(header))
        found = next((f for f in (_find_content(full, m["content"], s) for s in starts) if f), None)
        if found is None:
            if not m["content"].strip():
                closed = False  # an empty answer: nothing to train
                continue
            raise DataError(
                f"{row.source}: messages[{i}]: the chat template changed the assistant's text, so its tokens "
                "cannot be found in the rendered conversation (add {% generation %} blocks to the template "
                "to mark them)"
            )
        start, end = found
        marker = next((t for t in markers if full.startswith(t, end)), "")
        closed = bool(marker)
        end += len(marker)
        spans.append((start, end))
        floor = hint = end
    return full, spans, closed


def _content_variants(content: str) -> list[str]:
    """How a template may show a message: as written, trimmed, or without its `<think>` reasoning."""
    variants = [content, content.strip()]
    if "</think>" in content:
        variants.append(content.split("</think>")[-1].strip())
    return [v for i, v in enumerate(variants) if v and v not in variants[:i]]


def _find_content(full: str, content: str, start: int) -> tuple[int, int] | None:
    for v in _content_variants(content):
        i = full.find(v, start)
        if i >= 0:
            return i, i + len(v)
    return None


_SENTINEL = "Zq7AnswerSentinel"


def _assistant_header(row: Row, tokenizer: Any) -> str:
    """What the template writes before an assistant turn, or "" when that cannot be told.

    Rendered up to the first answer, with the answer replaced by a sentinel; else the template's
    generation prompt.
    """
    msgs = row.data["messages"]
    k = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    if k == 0:
        return ""
    try:
        base = str(tokenizer.apply_chat_template(msgs[:k], tokenize=False))
        probe = str(tokenizer.apply_chat_template([*msgs[:k], {"role": "assistant", "content": _SENTINEL}], tokenize=False))
        header = probe[len(base) : probe.find(_SENTINEL)] if probe.startswith(base) and _SENTINEL in probe[len(base) :] else ""
        if not header.strip():
            prompt = str(tokenizer.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=True))
            header = prompt[len(base) :] if prompt.startswith(base) else ""
    except Exception:  # the template refuses a conversation that ends before the answer
        return ""
    return header if header.strip() else ""


def _end_of_turn_markers(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens except BOS, padding and unknown, longest first."""
    special = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    special |= set(tokenizer.all_special_tokens)
    # Padding is no marker, unless it is the EOS token too (load_tokenizer pads with EOS when a
    # tokenizer has no pad token, as Llama-3's: its <|eot_id|> still ends every turn).
    special -= {tokenizer.bos_token, tokenizer.unk_token} | ({tokenizer.pad_token} - {tokenizer.eos_token})
    return sorted((t for t in special if t), key=len, reverse=True)


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


def trains_something(ex: Example) -> bool:
    """Whether the example has a target (a causal LM's first position never has one)."""
    if isinstance(ex.labels, int):
        return True
    return any(v != IGNORE_INDEX for v in (ex.labels if ex.decoder_input_ids is not None else ex.labels[1:]))


def pack(examples: list[Example], max_len: int) -> list[Example]:
    """Bin-pack whole causal-LM examples into blocks of at most `max_len` tokens.

    An example is never split. Best-fit decreasing (deterministic): each example, longest first,
    goes to the fullest block it still fits in. Every document keeps its own positions
    (`position_ids` restart at 0) and its first token is never a target, so no label crosses a
    boundary; with `attention_mask` left out, transformers' mask builders (and flash-attention's
    varlen path) then keep each document's attention inside the document. Documents without any
    target are left out, so no block is without a trained token.
    """
    import bisect

    docs = sorted((ex for ex in examples if trains_something(ex)), key=lambda ex: -len(ex.input_ids))
    blocks: list[list[Example]] = []
    free: list[tuple[int, int]] = []  # (room left, block index), sorted
    for ex in docs:
        n = min(len(ex.input_ids), max_len)
        i = bisect.bisect_left(free, (n, -1))
        if i < len(free):
            room, b = free.pop(i)
        else:
            room, b = max_len, len(blocks)
            blocks.append([])
        blocks[b].append(ex)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    out: list[Example] = []
    for members in blocks:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for ex in members:
            assert isinstance(ex.labels, list)
            n = min(len(ex.input_ids), max_len)
            ids.extend(ex.input_ids[:n])
            labels.extend([IGNORE_INDEX, *ex.labels[1:n]])
            positions.extend(range(n))
        out.append(Example(ids, labels, "packed", positions))
    return out


#: Model types whose attention honours packed `position_ids` (transformers' `create_causal_mask`
#: or flash-attention varlen); checked at start-up by `packing_isolated` where the weights allow.
PACKING_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "granite", "smollm3"}
)


@torch.no_grad()
def packing_isolated(model: torch.nn.Module, vocab_size: int, *, atol: float = 1e-4) -> bool:
    """Whether a packed block gives each document the logits it gets alone (two short documents)."""
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in (5, 7)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        block = pack([Example(d, [IGNORE_INDEX, *d[1:]]) for d in docs], 16)
        batch = collate(block, 0)
        packed = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device), use_cache=False).logits.float()
        low_precision = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
        tol = 5e-2 if low_precision else atol
        starts = [i for i, pos in enumerate(block[0].position_ids or []) if pos == 0] + [len(block[0].input_ids)]
        for a, b in itertools.pairwise(starts):
            alone = model(input_ids=torch.tensor([block[0].input_ids[a:b]], device=device), use_cache=False).logits.float()
            if not torch.allclose(packed[:, a:b], alone, atol=tol, rtol=tol):
                return False
        return True
    except (TypeError, ValueError):  # the model takes no position_ids, or rejects the layout
        return False
    finally:
        model.train(was_training)


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example in the batch.

    Unpacked batches carry an `attention_mask`. Packed batches carry `position_ids` instead (the
    padded tail is one more document, positions from 0, never a target) and a `token_mask` that
    only counts real tokens; the model never sees `token_mask`.
    """
    if batch[0].pixels is not None:  # images: one class id each, no tokens
        return {"pixel_values": torch.stack([ex.pixels() for ex in batch if ex.pixels is not None]), "labels": torch.tensor([ex.labels for ex in batch])}
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ex in enumerate(batch):
        ids[i, : len(ex.input_ids)] = torch.tensor(ex.input_ids)
        mask[i, : len(ex.input_ids)] = 1
    out = {"input_ids": ids}
    if batch[0].position_ids is not None:
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            assert ex.position_ids is not None
            n = len(ex.position_ids)
            positions[i, :n] = torch.tensor(ex.position_ids)
            positions[i, n:] = torch.arange(width - n)
        out["position_ids"] = positions
        out["token_mask"] = mask
    else:
        out["attention_mask"] = mask
    if isinstance(batch[0].labels, int):
        out["labels"] = torch.tensor([ex.labels for ex in batch], dtype=torch.long)
        return out
    if batch[0].decoder_input_ids is not None:  # seq2seq: labels aligned with the decoder inputs
        width = max(len(ex.labels) for ex in batch if isinstance(ex.labels, list))
        out["decoder_input_ids"] = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for i, ex in enumerate(batch):
            assert ex.decoder_input_ids is not None
            out["decoder_input_ids"][i, : len(ex.decoder_input_ids)] = torch.tensor(ex.decoder_input_ids)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, ex in enumerate(batch):
        assert isinstance(ex.labels, list)
        labels[i, : len(ex.labels)] = torch.tensor(ex.labels)
    out["labels"] = labels
    return out


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding input tokens of a collated batch (seq2seq: encoder plus target tokens; images:
    one per image)."""
    if "pixel_values" in batch:
        return int(batch["pixel_values"].shape[0])
    tokens = int(batch["token_mask" if "token_mask" in batch else "attention_mask"].sum())
    if "decoder_input_ids" in batch:
        tokens += int((batch["labels"] != IGNORE_INDEX).sum())
    return tokens


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training is in the data: the next micro-batch to run."""

    epoch: int
    micro_step: int


class Batches:
    """Deterministic, resumable micro-batches for one rank.

    Every epoch shuffles with (seed, epoch); the order is padded by wrapping so every rank runs
    the same number of micro-batches, and each rank takes its strided share.

    `group_by_length` (unpacked data): the shuffled order is cut into mega-batches of 50
    micro-batches (all ranks), each sorted by length, so a micro-batch holds examples of similar
    length and pads little; the micro-batch with the longest example goes first, so a too-large
    batch fails at the first step, not hours in. Packed blocks are near-full and need none of it.
    """

    MEGA_BATCH = 50

    def __init__(
        self, examples: list[Example], batch_size: int, rank: int, world_size: int, seed: int, pad_id: int, *, group_by_length: bool = False
    ) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pad_id = pad_id
        self.group_by_length = group_by_length
        per_step = batch_size * world_size
        self.micro_steps_per_epoch = max(1, math.ceil(len(examples) / per_step))

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        per_step = self.batch_size * self.world_size
        need = self.micro_steps_per_epoch * per_step
        while len(order) < need:
            order += order[: need - len(order)]
        if self.group_by_length:
            size = per_step * self.MEGA_BATCH

            def length(i: int) -> int:
                return len(self.examples[i].input_ids)

            order = [i for m in range(0, need, size) for i in sorted(order[m : m + size], key=length, reverse=True)]
            first = max(range(self.micro_steps_per_epoch), key=lambda b: length(order[b * per_step]))
            a, b = slice(0, per_step), slice(first * per_step, (first + 1) * per_step)
            order[a], order[b] = order[b], order[a]
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
