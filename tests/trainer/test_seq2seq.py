"""Format `seq2seq`: a tiny T5 (built from a config) on the bundled rewriting task.

- the trained objective equals transformers' own T5 loss (teacher forcing from the decoder start
  token, every target token counted once, the mean over all targets of the batch);
- LoRA and full runs: the loss falls, and the saved adapter / model, reloaded with peft /
  transformers, reproduces the trainer's logits;
- the generation scores (exact match, ROUGE-L of greedy outputs on the validation sample) the
  trainer reports equal what transformers' `generate` and the `rouge-score` package give for the
  reloaded model on the same examples;
- packing is refused for the format.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import torch
from finetune_trainer import contract, data
from finetune_trainer.engine import batch_targets, loss_sum, shifted_labels

from tests.support.caches import CACHE_ROOT

from .helpers import REPO, read_metrics_history, run_trainer, summary_of, trainer_env, write_config
from .tiny_models import build_tiny_t5

REWRITE = REPO / "examples" / "data" / "rewrite.jsonl"


@pytest.fixture(scope="module")
def tiny_t5() -> pathlib.Path:
    return build_tiny_t5(CACHE_ROOT / "models" / "tiny-t5-d32-l2")


def test_seq2seq_examples_and_loss_match_transformers(tiny_t5: pathlib.Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_t5))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(tiny_t5)).eval()
    start = model.config.decoder_start_token_id
    rows = data.read_rows([REWRITE], "seq2seq")[:6]
    examples, stats = data.tokenize(rows, "seq2seq", tok, 64, decoder_start_id=start)
    target_ids = tok(text_target=rows[0].data["target"])["input_ids"]
    assert examples[0].labels == target_ids and target_ids[-1] == tok.sep_token_id  # every target token, EOS included
    assert examples[0].decoder_input_ids == [start, *target_ids[:-1]]  # teacher forcing behind the start token
    assert stats.tokens == sum(len(ex.input_ids) + len(ex.labels) for ex in examples if isinstance(ex.labels, list))

    batch = data.collate(examples, tok.pad_token_id)  # targets of uneven length: padded with IGNORE_INDEX
    n_targets = sum(len(ex.labels) for ex in examples if isinstance(ex.labels, list))
    assert batch_targets(batch) == n_targets and not shifted_labels(batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=batch["decoder_input_ids"]).logits
        ours = float(loss_sum(logits, batch["labels"], shifted=shifted_labels(batch))) / batch_targets(batch)
        # transformers builds the decoder inputs itself from the labels (its own shift_right)
        theirs = float(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss)
    assert ours == pytest.approx(theirs, rel=1e-5)

    # the training loop's step (engine + target count), split in two micro-batches, optimises the same mean
    from finetune_trainer import distributed
    from finetune_trainer.config import parse_config
    from finetune_trainer.engine import TorchEngine
    from finetune_trainer.train import train_step

    cfg = parse_config({"model": {"uri": str(tiny_t5)}, "dataset": {"uri": "/d", "format": "seq2seq"}, "output": {"uri": "/o"},
                        "method": {"type": "full"}, "hyperparameters": {"precision": "fp32"}})
    env = distributed.read_env()
    step = train_step(TorchEngine(cfg, model.train(), env, total_steps=1, dtype=torch.float32),
                      [data.collate(examples[:2], tok.pad_token_id), data.collate(examples[2:], tok.pad_token_id)], env)
    assert step.targets == n_targets and step.loss == pytest.approx(theirs, rel=1e-5)


def _run(tiny_t5: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str], method: dict[str, Any], lr: float) -> tuple[list[float], dict[str, Any], pathlib.Path]:
    out = tmp_path / f"out-{method['type']}"
    cfg = write_config(tmp_path / f"{method['type']}.json", {
        "jobName": f"t5-{method['type']}",
        "model": {"uri": str(tiny_t5)},
        "dataset": {"uri": str(REWRITE), "format": "seq2seq", "validationSplit": 0.1},
        "method": method,
        "hyperparameters": {"maxSteps": 30, "learningRate": lr, "batchSize": 16, "maxSeqLength": 32, "warmupRatio": 0.0},
        "checkpoint": {"everySteps": 100},
        "output": {"uri": str(out)},
    })
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env(work_env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = summary_of(proc)
    assert summary["status"] == "Succeeded" and summary["steps"] == 30
    losses = [r["loss"] for r in read_metrics_history(out / contract.METRICS_HISTORY_NAME) if "loss" in r]
    manifest = json.loads((out / contract.MANIFEST_NAME).read_text())
    return losses, manifest, out


def _assert_reproduces(model: Any, check: dict[str, Any]) -> None:
    for ids, dec, expected in zip(check["inputIds"], check["decoderInputIds"], check["logits"], strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([dec])).logits[0, -1]
        assert torch.allclose(logits[: len(expected)], torch.tensor(expected), atol=1e-4), (logits[:4], expected[:4])


@pytest.mark.slow
def test_lora_t5_learns_and_adapter_reloads(tiny_t5: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    losses, manifest, out = _run(tiny_t5, tmp_path, work_env, {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}, 0.01)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert manifest["method"]["resolvedTargetModules"] == ["k", "o", "q", "v", "wi", "wo"]  # all-linear, lm_head left out
    assert manifest["metrics"]["evalLoss"] < losses[0]
    assert 0.0 <= manifest["metrics"]["evalExactMatch"] <= manifest["metrics"]["evalRougeL"] <= 1.0
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_2_SEQ_LM"
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(str(tiny_t5)), str(out / "adapter")).eval()
    _assert_reproduces(model, manifest["outputCheck"])
    with model.disable_adapter(), pytest.raises(AssertionError):
        _assert_reproduces(model, manifest["outputCheck"])  # the base alone does not: the adapter carries the training


def _reference_generation_scores(model: Any, tiny_t5: pathlib.Path) -> tuple[float, float, int]:
    """Exact match and ROUGE-L of `model`'s greedy outputs on the trainer's validation sample,
    computed with transformers' generate and Google's rouge-score (not the trainer's code)."""
    from finetune_trainer.config import parse_config
    from finetune_trainer.generation import GENERATION_SAMPLE
    from rouge_score import rouge_scorer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_t5))
    seed = parse_config({"model": {"uri": "/m"}, "dataset": {"uri": "/d"}, "output": {"uri": "/o"}}).hyperparameters.seed
    examples, _ = data.tokenize(data.read_rows([REWRITE], "seq2seq"), "seq2seq", tok, 32, decoder_start_id=model.config.decoder_start_token_id)
    sample = data.split(examples, 0.1, seed)[1][:GENERATION_SAMPLE]
    longest = max(len(ex.labels) for ex in sample if isinstance(ex.labels, list))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    exact = rouge = 0.0
    for ex in sample:
        assert isinstance(ex.labels, list)
        with torch.no_grad():
            ids = model.generate(input_ids=torch.tensor([ex.input_ids]), max_new_tokens=longest, do_sample=False, num_beams=1)[0]
        prediction = tok.decode(ids, skip_special_tokens=True).strip()
        reference = tok.decode(ex.labels, skip_special_tokens=True).strip()
        exact += prediction == reference
        rouge += scorer.score(reference, prediction)["rougeL"].fmeasure
    return exact / len(sample), rouge / len(sample), len(sample)


@pytest.mark.slow
def test_full_t5_learns_and_model_reloads(tiny_t5: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    from transformers import AutoModelForSeq2SeqLM

    losses, manifest, out = _run(tiny_t5, tmp_path, work_env, {"type": "full"}, 0.003)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    model = AutoModelForSeq2SeqLM.from_pretrained(str(out / "model")).eval()
    _assert_reproduces(model, manifest["outputCheck"])
    metrics = manifest["metrics"]
    exact, rouge, n = _reference_generation_scores(model, tiny_t5)
    assert n == 30  # 10% of 300 rows: the whole split is the sample
    assert metrics["evalRougeL"] == pytest.approx(rouge, abs=1e-5) and metrics["evalExactMatch"] == pytest.approx(exact, abs=1e-5)
    assert metrics["evalRougeL"] > 0.3, metrics  # the model writes much of the target after 30 steps
    history = read_metrics_history(out / contract.METRICS_HISTORY_NAME)
    assert history[-1]["final"] and history[-1]["evalRougeL"] == metrics["evalRougeL"]


def test_packing_is_refused_for_seq2seq(tiny_t5: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    cfg = write_config(tmp_path / "packed.json", {
        "model": {"uri": str(tiny_t5)}, "dataset": {"uri": str(REWRITE), "format": "seq2seq"},
        "hyperparameters": {"maxSteps": 1, "packing": True}, "output": {"uri": str(tmp_path / "out")},
    })
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env(work_env))
    assert proc.returncode == contract.EXIT_CONFIG_ERROR
    assert summary_of(proc)["message"] == "hyperparameters.packing: format seq2seq always trains unpacked; leave packing unset or false"


@pytest.mark.slow
def test_deepspeed_zero3_t5_scores_generation_on_two_ranks(tiny_t5: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """ZeRO-3 partitions the weights: every generate step gathers them collectively, so the two
    ranks (each decoding its share of the sample) must take part in each other's steps, also
    when one rank has a batch fewer: 21 validation examples, 11 and 10 per rank, in batches of 5."""
    rows = [json.loads(line) for line in REWRITE.read_text().splitlines()][:105]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "ds.json", {
        "jobName": "t5-zero3",
        "model": {"uri": str(tiny_t5)},
        "dataset": {"uri": str(tmp_path / "rows.jsonl"), "format": "seq2seq", "validationSplit": 0.2},
        "method": {"type": "full", "deepspeed": {"zeroStage": 3}},
        "hyperparameters": {"maxSteps": 6, "learningRate": 0.003, "batchSize": 5, "maxSeqLength": 32, "warmupRatio": 0.0, "evalEverySteps": 3},
        "checkpoint": {"everySteps": 100},
        "output": {"uri": str(out)},
    })
    env = trainer_env({"FINETUNE_WORK_DIR": str(tmp_path / "work")}, threads=1)
    proc = run_trainer(["train", "--config", str(cfg)], env, torchrun=["--standalone", "--nproc-per-node", "2"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "ZeRO-3: weights loaded partitioned (zero.Init)" in proc.stderr
    summary = summary_of(proc)
    assert summary["status"] == "Succeeded" and 0.0 <= summary["evalExactMatch"] <= summary["evalRougeL"] <= 1.0, summary
    evaluated = [r for r in read_metrics_history(out / contract.METRICS_HISTORY_NAME) if "evalRougeL" in r]
    assert [r["step"] for r in evaluated] == [3, 6], evaluated  # mid-run and final evaluations both decoded
