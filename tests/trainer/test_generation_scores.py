"""Seq2seq generation scores: ROUGE-L as Google's `rouge-score` computes it, exact match, and the
way both travel (progress document and Prometheus on the trainer side, `status.progress` on the
operator side)."""

from __future__ import annotations

import json
import random

import pytest
from finetune_operator.progress import parse_progress
from finetune_trainer.generation import lcs_length, rouge_l, rouge_tokens
from finetune_trainer.metrics import Progress, TrainerMetrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

WORDS = [
    "could",
    "you",
    "please",
    "send",
    "me",
    "the",
    "notes",
    "by",
    "Friday",
    "slides",
    "gimme",
    "receipt",
    "noon",
    "42",
]


def _pairs() -> list[tuple[str, str]]:
    rng = random.Random(7)
    pairs = [
        (
            "could you please send me the notes by friday?",
            "could you please send me the notes by friday?",
        ),
        ("could you please send me the notes by friday?", "Could you, please... send the NOTES?"),
        ("send it", ""),
        ("", "send it"),
        ("the cat sat on the mat", "the mat sat on the cat"),
        ("a-b_c d/e", "a b c d e"),
        ("x", "y"),
    ]
    for _ in range(200):
        ref = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))
        pred = " ".join(
            rng.choice(WORDS) + rng.choice(["", ",", "!", "-x"]) for _ in range(rng.randint(0, 12))
        )
        pairs.append((ref, pred))
    return pairs


def test_rouge_l_equals_the_rouge_score_package() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for ref, pred in _pairs():
        assert rouge_l(ref, pred) == pytest.approx(
            scorer.score(ref, pred)["rougeL"].fmeasure, abs=1e-12
        ), (ref, pred)
    assert rouge_tokens("Could you, PLEASE send_it?") == ["could", "you", "please", "send", "it"]
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4


def test_generation_scores_travel_to_prometheus_and_the_job_status() -> None:
    m = TrainerMetrics("job", "ns", 0)
    m.update(Progress(phase="Running", eval_loss=0.9, eval_exact_match=0.25, eval_rouge_l=0.8125))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())
    }
    assert families["finetune_trainer_eval_exact_match"].samples[0].value == pytest.approx(0.25)
    assert families["finetune_trainer_eval_rouge_l"].samples[0].value == pytest.approx(0.8125)
    doc = json.loads(m.progress_json())
    assert doc["evalExactMatch"] == pytest.approx(0.25) and doc["evalRougeL"] == pytest.approx(
        0.8125
    )
    # the operator reads the trainer's document into status.progress (camelCase on the wire)
    parsed = parse_progress(doc)
    assert parsed is not None
    status = parsed.model_dump(by_alias=True, exclude_none=True)
    assert status["evalExactMatch"] == pytest.approx(0.25) and status[
        "evalRougeL"
    ] == pytest.approx(0.8125)
    # a score outside [0, 1] (the status schema would refuse the whole patch) is dropped, not sent
    bad = parse_progress({**doc, "evalRougeL": 1.5})
    assert (
        bad is not None and bad.eval_rouge_l is None and bad.eval_exact_match == pytest.approx(0.25)
    )
