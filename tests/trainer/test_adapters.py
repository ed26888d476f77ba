"""What the trainer hands over: adapters that reload on their own, and outputs that stay consistent.

- a decoder-only classifier whose config has no pad token id trains with batches > 1, and its
  adapter reloads with `peft.AutoPeftModelForSequenceClassification` (3-label head, label names,
  the manifest's logits)
- adapter_config.json names the model's source (hf:// -> org/name + revision), never a pod path
- LoRA targets every linear layer by default; a classifier's head trains fully (modules_to_save)
- RNG states read from a checkpoint load with `weights_only=True`; a planted pickle is not run
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
from typing import Any

import pytest
import torch
from finetune_trainer import contract
from finetune_trainer.checkpoint import Checkpointer, _load_rng_state, _rng_state, _set_rng_state
from finetune_trainer.config import CheckpointSettings, TrainerConfig
from finetune_trainer.distributed import read_env
from finetune_trainer.recipes import LABELS_FILE, LoraRecipe, Task, base_model_reference
from finetune_trainer.storage import Output, sha256_file

from .helpers import run_trainer, summary_of, trainer_env, write_config, write_jsonl

LABELS = ["negative", "neutral", "positive"]
ALL_PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def three_label_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    cue = {"negative": ["awful", "bad", "terrible"], "neutral": ["okay", "fine", "average"], "positive": ["great", "superb", "lovely"]}
    filler = ["the", "food", "was", "really", "and", "service", "quite", "today"]
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = [rng.choice(filler) for _ in range(rng.randint(2, 9))] + [rng.choice(cue[label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def llama_without_pad_id(tiny_llama: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """The tiny Llama with `pad_token_id: null` in its config, as Llama/Mistral/Qwen ship."""
    shutil.copytree(tiny_llama, dest)
    config = json.loads((dest / "config.json").read_text())
    config["pad_token_id"] = None
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def _config(**fields: Any) -> TrainerConfig:
    return TrainerConfig.model_validate({"dataset": {"uri": "/data/x.jsonl"}, "output": {"uri": "/out"}, **fields})


# --- 1, 2 (and the all-linear default, end to end) ---------------------------------------------


@pytest.mark.slow
def test_decoder_only_classifier_without_pad_id_trains_and_reloads_with_autopeft(tiny_llama: pathlib.Path, tmp_path: pathlib.Path, work_env: dict[str, str]) -> None:
    model_dir = llama_without_pad_id(tiny_llama, tmp_path / "llama-no-pad")
    data = write_jsonl(tmp_path / "three.jsonl", three_label_rows(48))
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "cfg.json", {
        "jobName": "three-labels",
        "model": {"uri": str(model_dir)},
        "dataset": {"uri": str(data), "format": "classification", "validationSplit": 0.25},
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 3, "learningRate": 0.01, "batchSize": 8, "maxSeqLength": 32, "warmupRatio": 0.0},
        "checkpoint": {"everySteps": 1000},
        "output": {"uri": str(out)},
    })
    proc = run_trainer(["train", "--config", str(cfg)], trainer_env(work_env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = summary_of(proc)
    assert summary["steps"] == 3
    history = [json.loads(line) for line in (out / contract.METRICS_HISTORY_NAME).read_text().splitlines()]
    assert history[-1]["evalAccuracy"] == summary["evalAccuracy"] and history[-1]["evalF1"] == summary["evalF1"]
    manifest = json.loads((out / contract.MANIFEST_NAME).read_text())
    assert manifest["dataset"]["labels"] == LABELS
    assert manifest["method"]["resolvedTargetModules"] == ALL_PROJECTIONS  # all-linear, not q_proj/v_proj
    adapter = out / "adapter"
    assert f"adapter/{LABELS_FILE}" in {f["path"] for f in manifest["files"]}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir)  # a local path stays the local path
    assert adapter_config["task_type"] == "SEQ_CLS" and "score" in adapter_config["modules_to_save"]

    # the documented reload (docs/trainer.md): labels.json + the tokenizer saved with the adapter
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    labels = json.loads((adapter / "labels.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        str(adapter),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    ).eval()
    head = model.base_model.model.score
    assert head.modules_to_save["default"].out_features == 3
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    check = manifest["outputCheck"]
    assert len(check["inputIds"]) == 2
    singles = []
    for ids, expected in zip(check["inputIds"], check["logits"], strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        assert logits.shape == (3,)
        assert torch.allclose(logits, torch.tensor(expected), atol=1e-4), (logits, expected)
        singles.append(logits)
    # batched, right-padded with the tokenizer's pad id: each row pools its own last real token
    a, b = check["inputIds"]
    width = max(len(a), len(b))
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, row in enumerate((a, b)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(batched, torch.stack(singles), atol=1e-4)
    # the reported accuracy and macro-F1 are those of the reloaded model on the validation split
    from finetune_trainer.data import read_rows, split, tokenize

    examples, _ = tokenize(read_rows([data], "classification"), "classification", tokenizer, 32, LABELS)
    _, val = split(examples, 0.25, 42)
    with torch.no_grad():
        pairs = [(int(ex.labels), int(model(input_ids=torch.tensor([ex.input_ids])).logits.argmax())) for ex in val]  # type: ignore[arg-type]
    assert summary["evalAccuracy"] == pytest.approx(sum(t == p for t, p in pairs) / len(pairs), abs=1e-6)
    f1s = []
    for c in range(3):
        tp = sum(t == p == c for t, p in pairs)
        support, predicted = sum(t == c for t, _ in pairs), sum(p == c for _, p in pairs)
        if support or predicted:
            f1s.append(2 * tp / (support + predicted))
    assert summary["evalF1"] == pytest.approx(sum(f1s) / len(f1s), abs=1e-6)
    # without its adapter the model gives other logits: the head and LoRA weights were reloaded
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=torch.tensor([a])).logits[0]
    assert not torch.allclose(plain, singles[0], atol=1e-3)


# --- 3 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_lora(tiny_llama: pathlib.Path) -> tuple[LoraRecipe, torch.nn.Module, Any]:
    from transformers import AutoTokenizer

    recipe = LoraRecipe(_config(model={"uri": str(tiny_llama)}), read_env())
    model = recipe.build(tiny_llama, Task("causal-lm"))
    return recipe, model, AutoTokenizer.from_pretrained(str(tiny_llama))


@pytest.mark.parametrize(
    ("uri", "name", "revision"),
    [
        ("hf://meta-llama/Llama-3.2-1B@v1.0", "meta-llama/Llama-3.2-1B", "v1.0"),
        ("hf://Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B", None),
        ("s3://models-bucket/llama/3b", "s3://models-bucket/llama/3b", None),
        ("pvc://model-cache/llama/3b", "pvc://model-cache/llama/3b", None),
        ("file:///srv/models/llama", "/srv/models/llama", None),
        ("/srv/models/llama", "/srv/models/llama", None),
    ],
)
def test_adapter_names_the_model_source_as_its_base(built_lora: tuple[LoraRecipe, torch.nn.Module, Any], tmp_path: pathlib.Path, uri: str, name: str, revision: str | None) -> None:
    import dataclasses

    recipe, model, tokenizer = built_lora
    assert base_model_reference(uri) == (name, revision)
    dataclasses.replace(recipe, cfg=_config(model={"uri": uri})).save_final(model, tokenizer, tmp_path, None)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == name
    assert saved["revision"] == revision
    card = (tmp_path / "README.md").read_text()
    assert f"base_model: {name}" in card and "tiny-llama" not in card  # the model card names it too
    assert not (tmp_path / LABELS_FILE).exists()  # only classifiers have labels
    # the live model's config is left as it was
    assert model.peft_config["default"].base_model_name_or_path == str(recipe.cfg.model.uri)  # type: ignore[index]


# --- 4 ------------------------------------------------------------------------------------------


def _adapted(model: torch.nn.Module) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {n for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def test_lora_targets_every_linear_layer_by_default(tiny_llama: pathlib.Path, minilm: pathlib.Path) -> None:
    from peft.utils import ModulesToSaveWrapper

    env = read_env()
    # causal LM: the 7 projections of every layer; lm_head (the output layer) untouched
    recipe = LoraRecipe(_config(model={"uri": str(tiny_llama)}), env)
    model = recipe.build(tiny_llama, Task("causal-lm"))
    adapted = _adapted(model)
    assert recipe.target_modules == ALL_PROJECTIONS
    assert len(adapted) == 2 * 7 and not any("lm_head" in n for n in adapted)

    # decoder-only classifier: same projections; the score head is not a LoRA, it trains fully
    recipe = LoraRecipe(_config(model={"uri": str(tiny_llama)}), env)
    model = recipe.build(tiny_llama, Task("classification", tuple(LABELS)))
    assert recipe.target_modules == ALL_PROJECTIONS and len(_adapted(model)) == 2 * 7
    score = model.base_model.model.score
    assert isinstance(score, ModulesToSaveWrapper)
    assert not any("score" in n for n in _adapted(model))
    assert all(p.requires_grad for p in score.modules_to_save["default"].parameters())

    # encoder classifier (MiniLM): query/key/value and the dense layers; classifier trains fully
    recipe = LoraRecipe(_config(model={"uri": str(minilm)}), env)
    model = recipe.build(minilm, Task("classification", ("neg", "pos")))
    assert recipe.target_modules == ["dense", "key", "query", "value"]
    assert not any("classifier" in n for n in _adapted(model))
    classifier = model.base_model.model.classifier
    assert isinstance(classifier, ModulesToSaveWrapper)
    assert all(p.requires_grad for p in classifier.modules_to_save["default"].parameters())

    # configured targetModules are used as given
    recipe = LoraRecipe(_config(model={"uri": str(tiny_llama)}, method={"type": "lora", "lora": {"targetModules": ["q_proj"]}}), env)
    model = recipe.build(tiny_llama, Task("causal-lm"))
    assert recipe.target_modules == ["q_proj"] and len(_adapted(model)) == 2


# --- 5c -----------------------------------------------------------------------------------------


class _NoEngine:
    def load(self, directory: pathlib.Path) -> None:
        pass


def _plant_checkpoint(root: pathlib.Path, step: int, rng_file: pathlib.Path) -> None:
    """A checkpoint as Checkpointer.save leaves it: files, then a manifest with their sha256."""
    rel = contract.CHECKPOINT_DIR_FORMAT.format(step=step)
    d = root / rel
    d.mkdir(parents=True)
    shutil.copyfile(rng_file, d / "rng-rank0.pt")
    (d / "trainer_state.json").write_text(json.dumps({"step": step, "epoch": 0, "microStep": step, "tokensSeen": 10, "history": []}))
    files = [{"path": rel + p.name, "sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted(d.iterdir())]
    (d / contract.MANIFEST_NAME).write_text(json.dumps({"step": step, "files": files}))


class _RunsCode:
    """Pickles as a call to os.mkdir(marker): what a planted file could make a full unpickle run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_rng_state_round_trips_with_weights_only_and_a_planted_pickle_is_not_run(tmp_path: pathlib.Path) -> None:
    # round trip through a real checkpoint restore (weights_only=True)
    random.seed(7)
    torch.manual_seed(7)
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    loaded = _load_rng_state(tmp_path / "rng.pt")
    assert isinstance(loaded["python"], tuple) and loaded["torch"].dtype == torch.uint8
    good = tmp_path / "good"
    _plant_checkpoint(good, 4, tmp_path / "rng.pt")
    state = Checkpointer(Output(str(good)), CheckpointSettings(), tmp_path / "stage-good").restore(_NoEngine())  # type: ignore[arg-type]
    assert state is not None and state.step == 4
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])  # restored
    _set_rng_state(loaded)
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])

    # a planted rng file that would run code when unpickled: refused, and the code never runs
    marker = tmp_path / "code-ran"
    torch.save({"python": _RunsCode(marker), "torch": torch.get_rng_state()}, tmp_path / "evil.pt")
    evil = tmp_path / "evil"
    _plant_checkpoint(evil, 8, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match=r"rng-rank0\.pt is not a plain RNG state, refusing to load it"):
        Checkpointer(Output(str(evil)), CheckpointSettings(), tmp_path / "stage-evil").restore(_NoEngine())  # type: ignore[arg-type]
    assert not marker.exists()
