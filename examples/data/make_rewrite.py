"""Generate the bundled seq2seq demo dataset `rewrite.jsonl` (informal -> formal rewriting).

Run: .venv/bin/python examples/data/make_rewrite.py  (rewrites examples/data/rewrite.jsonl)

Each line is `{"input": ..., "target": ...}`, the `seq2seq` format of the trainer: a short
informal request and its polite rewrite. The rows come from templates in this script (no
licence question, no network) with a fixed seed, so the committed file only changes with it.
"""

from __future__ import annotations

import json
import pathlib
import random

SEED = 20260115
ROWS = 300

THINGS = [
    "report", "invoice", "slides", "budget", "contract", "schedule", "summary", "notes",
    "figures", "draft", "agenda", "receipt", "photos", "code", "minutes", "plan",
]
WHEN = ["today", "tomorrow", "by friday", "this week", "before noon", "tonight"]
INFORMAL = [
    "gimme the {thing} {when}",
    "send the {thing} {when}",
    "i need the {thing} {when}",
    "where is the {thing}? need it {when}",
]
FORMAL = "could you please send me the {thing} {when}?"


def rows(n: int = ROWS, seed: int = SEED) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing, when = rng.choice(THINGS), rng.choice(WHEN)
        out.append({
            "input": "make formal: " + rng.choice(INFORMAL).format(thing=thing, when=when),
            "target": FORMAL.format(thing=thing, when=when),
        })
    return out


def main() -> None:
    path = pathlib.Path(__file__).with_name("rewrite.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    print(f"wrote {ROWS} rows to {path}")


if __name__ == "__main__":
    main()
