"""Prometheus text parsed into sample values (prometheus-client's own parser), for assertions on
numbers rather than on names appearing in the text (a name appears in HELP and TYPE lines and
in a 0 sample whatever the code does)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value for every sample in an exposition."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of the sample `name` with exactly `labels` (None: no such sample)."""
    return samples(text).get((name, frozenset((labels or {}).items())))


def families(text: str) -> dict[str, str]:
    """family name -> type (counter, gauge, histogram, ...)."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}
