"""Generate the image-classification demo dataset: small rendered shapes (circle, square, triangle).

Run: .venv/bin/python examples/data/make_shapes.py DEST [--per-class 100] [--size 32] [--jsonl]

Writes DEST/<label>/<n>.png (the `<label>/<file>` layout the trainer reads as
`image-classification`), or with --jsonl the images under DEST/images/ and DEST/labels.jsonl
with rows {"image": "images/<n>.png", "label": "<label>"}. Every 5th image is a JPEG, so both
decoders are exercised. The images are drawn with Pillow from a fixed seed (no licence
question, no network) and are not committed: a few hundred of them take a second to make.
Each image: one shape of random size, position and colour on a random plain background.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random

LABELS = ("circle", "square", "triangle")


def draw(label: str, size: int, rng: random.Random) -> object:
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(0, 90) for _ in range(3))
    fg = tuple(rng.randint(150, 255) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    if label == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif label == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return im


def write_shapes(dest: pathlib.Path, *, per_class: int = 100, size: int = 32, seed: int = 0, jsonl: bool = False) -> list[dict[str, str]]:
    """Draw `per_class` images of each shape into `dest`; returns the rows (image path, label)."""
    rng = random.Random(seed)
    rows = []
    for n in range(per_class * len(LABELS)):
        label = LABELS[n % len(LABELS)]
        ext = "jpg" if n % 5 == 4 else "png"
        rel = f"images/{n:04d}.{ext}" if jsonl else f"{label}/{n:04d}.{ext}"
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = draw(label, size, rng)
        image.save(path, **({"quality": 95} if ext == "jpg" else {}))  # type: ignore[attr-defined]
        rows.append({"image": rel, "label": label})
    if jsonl:
        (dest / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=pathlib.Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--jsonl", action="store_true", help="images/ + labels.jsonl instead of <label>/ directories")
    args = parser.parse_args()
    rows = write_shapes(args.dest, per_class=args.per_class, size=args.size, jsonl=args.jsonl)
    print(f"wrote {len(rows)} images to {args.dest}")


if __name__ == "__main__":
    main()
