"""Reading the rank-0 trainer's progress endpoint (the only module that talks to trainer pods).

`parse_progress` is pure (JSON in, Progress out; camelCase or snake_case keys, unknown keys
ignored); `fetch_progress` does one short HTTP GET of http://<pod-ip>:<METRICS_PORT>/progress.
An unreachable trainer is not an error: the last known progress is kept.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import aiohttp

from finetune_operator import constants as c
from finetune_operator.api import Progress

ct = c.contract
TIMEOUT_SECONDS = 2.0

_ALIASES = {
    "step": ("step", "globalStep", "global_step"),
    "total_steps": ("totalSteps", "total_steps", "maxSteps", "max_steps"),
    "epoch": ("epoch",),
    "percent": ("percent", "progressPercent"),
    "loss": ("loss", "trainLoss", "train_loss"),
    "eval_loss": ("evalLoss", "eval_loss"),
    "eval_accuracy": ("evalAccuracy", "eval_accuracy"),
    "eval_f1": ("evalF1", "eval_f1"),
    "eval_exact_match": ("evalExactMatch", "eval_exact_match"),
    "eval_rouge_l": ("evalRougeL", "eval_rouge_l"),
    "tokens_per_second": ("tokensPerSecond", "tokens_per_second"),
    "eta_seconds": ("etaSeconds", "eta_seconds"),
    "stage": ("stage", "phase", "state"),
    "trained_tokens": ("trainedTokens", "trained_tokens", "tokens"),
}
_INTS = {"step", "total_steps", "eta_seconds", "trained_tokens"}
#: Scores between 0 and 1; a value outside is dropped (the status schema would refuse it).
_RATIOS = ("eval_accuracy", "eval_f1", "eval_exact_match", "eval_rouge_l")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def parse_progress(data: Any) -> Progress | None:
    """The progress fields found in `data`; non-finite numbers (NaN, Infinity) are dropped."""
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {}
    for field, names in _ALIASES.items():
        for name in names:
            value = data.get(name)
            if value is None:
                continue
            try:
                if field == "stage":
                    out[field] = str(value)[:32]
                    break
                number = float(value)
                if not math.isfinite(number):
                    continue  # NaN/Infinity (a diverged loss) is not JSON: the API server would reject the status
                out[field] = max(int(number), 0) if field in _INTS else number
            except (TypeError, ValueError, OverflowError):
                continue
            break
    if out.get("total_steps") and out.get("step") is not None:  # the steps are the truth
        out["percent"] = 100.0 * out["step"] / out["total_steps"]
    if "percent" in out:
        out["percent"] = round(min(max(out["percent"], 0.0), 100.0), 1)
    for key in ("loss", "eval_loss", *_RATIOS):
        if key in out:
            out[key] = round(out[key], 4)
    for key in _RATIOS:
        if key in out and not 0.0 <= out[key] <= 1.0:
            del out[key]
    if "tokens_per_second" in out:
        out["tokens_per_second"] = round(out["tokens_per_second"], 1)
    if "epoch" in out:
        out["epoch"] = round(out["epoch"], 3)
    return Progress.model_validate(out) if out else None


def progress_url(pod_ip: str, port: int = ct.METRICS_PORT) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{port}{ct.HTTP_PROGRESS_PATH}"


#: The most of a /progress answer that is read: the pod may run a user's image, and the operator
#: must not hold whatever it sends (the trainer's answer is well under 1 KiB).
MAX_PROGRESS_BYTES = 64 * 1024


async def fetch_progress(session: aiohttp.ClientSession, url: str) -> Progress | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)) as resp:
            if resp.status != 200:
                return None
            body = await resp.content.read(MAX_PROGRESS_BYTES + 1)
            if len(body) > MAX_PROGRESS_BYTES:
                return None  # not the trainer's answer
            return parse_progress(json.loads(body))
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
        return None
