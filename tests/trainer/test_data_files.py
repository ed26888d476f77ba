"""Datasets as users keep them: Parquet and CSV files (one or many), their own column names.

The same rows in JSON Lines, Parquet and CSV must give the same examples and, trained, the same
losses; `dataset.columns` maps the format's fields to the data's columns; bad rows are named by
file and row; `validate` reports the resolved columns.
"""

from __future__ import annotations

import csv
import json
import pathlib
import random
from typing import Any

import pytest
from finetune_trainer import contract, data
from finetune_trainer.config import ConfigError, parse_config
from finetune_trainer.errors import DataError

from .helpers import (
    COLORS,
    read_metrics_history,
    run_trainer,
    sentiment_rows,
    summary_of,
    trainer_env,
    write_config,
    write_jsonl,
)


def write_parquet(path: pathlib.Path, rows: list[dict[str, Any]], row_group_size: int = 1000) -> pathlib.Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)
    return path


def write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def renamed(rows: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    return [{names.get(k, k): v for k, v in r.items()} for r in rows]


def qa_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Prompt-completion rows with commas, quotes and a literal "NA" (CSV must keep them as text)."""
    rng = random.Random(seed)
    items = list(COLORS.items())
    out = []
    for i in range(n):
        thing, color = rng.choice(items)
        prompt = f'Q: what color, "roughly", is the {thing}?\nA:' if i % 3 else f"Q: {thing} NA?\nA:"
        out.append({"prompt": prompt, "completion": f" {color}" if i % 7 else " NA"})
    return out


def test_parquet_and_csv_rows_equal_jsonl_rows_with_own_column_names(tmp_path: pathlib.Path) -> None:
    rows = sentiment_rows(120)
    jsonl = data.read_rows([write_jsonl(tmp_path / "s.jsonl", rows)], "classification")
    theirs = renamed(rows, {"text": "review", "label": "sentiment"})
    # Parquet split over two files and several row groups (read in streamed batches)
    pq_files = [write_parquet(tmp_path / "pq" / "part-0.parquet", theirs[:70], 16), write_parquet(tmp_path / "pq" / "part-1.parquet", theirs[70:], 16)]
    columns = {"text": "review", "label": "sentiment"}
    from_parquet = data.read_rows(pq_files, "classification", columns)
    from_csv = data.read_rows([write_csv(tmp_path / "s.csv", theirs)], "classification", columns)
    assert [r.data for r in from_parquet] == [r.data for r in jsonl]
    assert [r.data for r in from_csv] == [r.data for r in jsonl]  # integer labels stay integers
    assert from_parquet[70].source == "part-1.parquet:1" and from_csv[2].source == "s.csv:3"

    qa = qa_rows(40)
    from_qa_csv = data.read_rows([write_csv(tmp_path / "qa.csv", renamed(qa, {"prompt": "question", "completion": "answer"}))],
                                 "prompt-completion", {"prompt": "question", "completion": "answer"})
    assert [r.data for r in from_qa_csv] == qa  # quotes, commas, newlines and "NA" kept as written


def test_bad_rows_and_missing_columns_are_named(tmp_path: pathlib.Path) -> None:
    rows = renamed(sentiment_rows(6), {"text": "review"})
    rows[3]["review"] = ""
    with pytest.raises(DataError) as err:
        data.read_rows([write_parquet(tmp_path / "d.parquet", rows)], "classification", {"text": "review"})
    assert "row 4 of d.parquet: field 'text' is empty" in str(err.value)
    # the column named in dataset.columns is absent
    with pytest.raises(DataError) as err:
        data.read_rows([write_csv(tmp_path / "d.csv", sentiment_rows(3))], "classification", {"text": "review"})
    assert "row 1 of d.csv: missing column 'review' (dataset.columns.text)" in str(err.value) and "(and 2 more)" not in str(err.value)
    assert "3 row(s)" in str(err.value)
    # a mapping to a field the format does not have is a config error
    with pytest.raises(ConfigError) as cfg_err:
        parse_config({"model": {"uri": "/m"}, "output": {"uri": "/o"},
                      "dataset": {"uri": "/d", "format": "classification", "columns": {"prompt": "question"}}})
    assert "dataset: Value error, columns: prompt is not a field of format classification (its fields: text, label)" in str(cfg_err.value)


def _train(cfg_path: pathlib.Path, env: dict[str, str]) -> list[float]:
    proc = run_trainer(["train", "--config", str(cfg_path)], trainer_env(env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [r["loss"] for r in read_metrics_history(pathlib.Path(json.loads(cfg_path.read_text())["output"]["uri"]) / contract.METRICS_HISTORY_NAME)]


@pytest.mark.slow
def test_classification_from_parquet_trains_like_jsonl(minilm: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    rows = sentiment_rows(96)
    sources = {
        "jsonl": write_jsonl(tmp_path / "jsonl" / "sentiment.jsonl", rows),
        "parquet": write_parquet(tmp_path / "parquet" / "sentiment.parquet", renamed(rows, {"text": "review", "label": "sentiment"})),
    }
    losses = {}
    for kind, path in sources.items():
        dataset: dict[str, Any] = {"uri": str(path.parent), "format": "classification", "validationSplit": 0.0}
        if kind == "parquet":
            dataset["columns"] = {"text": "review", "label": "sentiment"}
        cfg = write_config(tmp_path / f"{kind}.json", {
            "model": {"uri": str(minilm)}, "dataset": dataset,
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": 3, "learningRate": 0.003, "batchSize": 8, "maxSeqLength": 32, "warmupRatio": 0.0},
            "output": {"uri": str(tmp_path / f"out-{kind}")},
        })
        losses[kind] = _train(cfg, {**work_env, "FINETUNE_WORK_DIR": str(tmp_path / f"work-{kind}")})
    assert len(losses["jsonl"]) == 3
    assert losses["parquet"] == pytest.approx(losses["jsonl"], rel=1e-6, abs=1e-6)

    # validate reports the resolved columns
    proc = run_trainer(["validate", "--config", str(tmp_path / "parquet.json")], trainer_env(work_env))
    summary = summary_of(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["dataset"]["columns"] == {"text": "review", "label": "sentiment"}
    assert summary["dataset"]["rows"] == 96 and summary["dataset"]["labels"] == ["0", "1"]


@pytest.mark.slow
def test_prompt_completion_from_csv_trains_like_jsonl(tiny_llama: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    rows = qa_rows(64)
    sources = {
        "jsonl": write_jsonl(tmp_path / "qa.jsonl", rows),
        "csv": write_csv(tmp_path / "qa.csv", renamed(rows, {"prompt": "question", "completion": "answer"})),
    }
    losses = {}
    for kind, path in sources.items():
        dataset: dict[str, Any] = {"uri": str(path), "format": "prompt-completion", "validationSplit": 0.0}
        if kind == "csv":
            dataset["columns"] = {"prompt": "question", "completion": "answer"}
        cfg = write_config(tmp_path / f"{kind}.json", {
            "model": {"uri": str(tiny_llama)}, "dataset": dataset,
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": 4, "learningRate": 0.01, "batchSize": 8, "maxSeqLength": 64, "warmupRatio": 0.0},
            "output": {"uri": str(tmp_path / f"out-{kind}")},
        })
        losses[kind] = _train(cfg, {**work_env, "FINETUNE_WORK_DIR": str(tmp_path / f"work-{kind}")})
    assert len(losses["jsonl"]) == 4 and losses["jsonl"][-1] < losses["jsonl"][0]
    assert losses["csv"] == pytest.approx(losses["jsonl"], rel=1e-6, abs=1e-6)
