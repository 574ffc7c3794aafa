"""Small helpers for reading metrics back in tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0.0 when the series does not exist."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    """Every value `label` takes across the samples of `name`."""
    seen: set[str] = set()
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and label in sample.labels:
                seen.add(sample.labels[label])
    return seen
