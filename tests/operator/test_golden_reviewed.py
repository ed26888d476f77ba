"""Golden files are expectations someone reviewed, not snapshots the builders rewrite.

`UPDATE_GOLDEN=1` (tests/operator/test_builders.py) rewrites tests/operator/golden/*.yaml from the
builders; this test then fails until the new content's sha256 is entered in golden/REVIEWED, so
a builder change cannot carry its own regenerated expectations through unnoticed.
"""

from __future__ import annotations

import hashlib
import pathlib

from tests.operator.helpers import GOLDEN

REVIEWED = GOLDEN / "REVIEWED"


def reviewed() -> dict[str, str]:
    """file name -> reviewed sha256 (each file listed once)."""
    out: dict[str, str] = {}
    for number, line in enumerate(REVIEWED.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        assert len(digest) == 64 and name, f"REVIEWED:{number}: expected '<sha256>  <file>', got {line!r}"
        assert name not in out, f"REVIEWED:{number}: {name} listed twice"
        out[name] = digest
    return out


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_golden_file_is_reviewed_as_it_is() -> None:
    goldens = sorted(GOLDEN.glob("*.yaml"))
    assert goldens, "no golden files"
    entries = reviewed()
    unreviewed = [f"{sha256(p)}  {p.name}" for p in goldens if entries.get(p.name) != sha256(p)]
    assert unreviewed == [], (
        "golden files changed without a review entry; read their diff, then put these lines in "
        f"{REVIEWED.relative_to(GOLDEN.parents[2])}:\n" + "\n".join(unreviewed)
    )


def test_no_entry_for_a_golden_file_that_is_gone() -> None:
    names = {p.name for p in GOLDEN.glob("*.yaml")}
    assert sorted(set(reviewed()) - names) == []
