"""Generate the bundled demo dataset `sentiment.jsonl` (binary sentiment classification).

Run: .venv/bin/python examples/data/make_sentiment.py  (rewrites examples/data/sentiment.jsonl)

The rows are written from templates by this script, so the dataset carries no licence question and
needs no network. Each line is `{"text": ..., "label": 0|1}` (0 = negative, 1 = positive), the
`classification` format of the trainer. The output is deterministic (fixed seed), so the committed
file only changes when this script does.
"""

from __future__ import annotations

import json
import pathlib
import random

SEED = 20260101
ROWS_PER_LABEL = 200

SUBJECTS = [
    "the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending",
    "the restaurant", "the food", "the service", "our waiter", "the pasta", "the coffee",
    "this phone", "the battery", "the screen", "the camera", "the keyboard", "this laptop",
    "the hotel", "the room", "the staff", "the view", "the book", "the story", "the author",
    "the delivery", "the packaging", "the price", "the app", "the update", "the concert",
]
POSITIVE_ADJ = [
    "wonderful", "excellent", "fantastic", "delightful", "brilliant", "superb", "lovely",
    "great", "amazing", "charming", "outstanding", "impressive", "enjoyable", "perfect",
]
NEGATIVE_ADJ = [
    "terrible", "awful", "boring", "disappointing", "dreadful", "poor", "horrible", "bland",
    "mediocre", "annoying", "broken", "useless", "painful", "frustrating",
]
POSITIVE_TAILS = [
    "I would recommend it to anyone.", "I will definitely come back.", "Worth every penny.",
    "It made my day.", "Five stars from me.", "I loved every minute.", "Highly recommended.",
    "Better than I expected.", "I am very happy with it.", "",
]
NEGATIVE_TAILS = [
    "I want my money back.", "I will not come back.", "A complete waste of time.",
    "It ruined my evening.", "One star is too generous.", "I regret it.", "Avoid it.",
    "Worse than I expected.", "I am very unhappy with it.", "",
]
TEMPLATES = [
    "{subj} was {adj}. {tail}",
    "Honestly, {subj} is {adj}. {tail}",
    "I found {subj} {adj} and {adj2}. {tail}",
    "What a {adj} experience: {subj} was {adj2}. {tail}",
    "{subj} turned out {adj}. {tail}",
    "Overall {subj} felt {adj}. {tail}",
]


def make_row(rng: random.Random, label: int) -> dict[str, object]:
    adjs, tails = (POSITIVE_ADJ, POSITIVE_TAILS) if label == 1 else (NEGATIVE_ADJ, NEGATIVE_TAILS)
    adj, adj2 = rng.sample(adjs, 2)
    text = rng.choice(TEMPLATES).format(
        subj=rng.choice(SUBJECTS), adj=adj, adj2=adj2, tail=rng.choice(tails)
    ).strip()
    return {"text": text[0].upper() + text[1:], "label": label}


def main() -> None:
    rng = random.Random(SEED)
    rows = [make_row(rng, label) for label in (0, 1) for _ in range(ROWS_PER_LABEL)]
    rng.shuffle(rows)
    out = pathlib.Path(__file__).with_name("sentiment.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
