"""The kwok stage file and the Python constants tests use to drive pods agree (no cluster).

Run: .venv/bin/python -m pytest tests/cluster/test_kwok_contract.py
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.cluster import kwok
from tests.cluster.cluster import KWOK_STAGES


def _stages() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(KWOK_STAGES.read_text()) if d]
    return {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Stage"}


def test_every_result_has_exactly_one_stage_keyed_on_the_result_annotation() -> None:
    by_result: dict[str, list[str]] = {}
    for name, spec in _stages().items():
        wanted = spec["selector"].get("matchAnnotations", {}).get(kwok.RESULT)
        if wanted is not None:
            by_result.setdefault(wanted, []).append(name)
    assert {r: len(n) for r, n in by_result.items()} == {r: 1 for r in kwok.RESULTS}


def test_result_stages_read_the_delay_and_exit_code_annotations() -> None:
    stages = _stages()
    phase = {kwok.SUCCEEDED: "Succeeded", kwok.FAILED: "Failed", kwok.EVICTED: "Failed"}
    for result in kwok.RESULTS:
        spec = stages[f"pod-{result.lower()}"]
        assert kwok.DELAY in spec["delay"]["durationFrom"]["expressionFrom"]
        assert f"phase: {phase[result]}" in spec["next"]["statusTemplate"]
    assert kwok.EXIT_CODE in stages["pod-failed"]["next"]["statusTemplate"]
    assert "DisruptionTarget" in stages["pod-evicted"]["next"]["statusTemplate"]


def test_pod_annotations() -> None:
    assert kwok.pod_annotations(kwok.FAILED, exit_code=137, delay="1s") == {
        kwok.RESULT: "Failed",
        kwok.EXIT_CODE: "137",
        kwok.DELAY: "1s",
    }
    assert kwok.pod_annotations(kwok.SUCCEEDED) == {kwok.RESULT: "Succeeded"}
    with pytest.raises(ValueError, match="result must be one of"):
        kwok.pod_annotations("Crashed")
    with pytest.raises(ValueError, match="exit_code only applies"):
        kwok.pod_annotations(kwok.SUCCEEDED, exit_code=0)
