"""The metric registry: each metric is one function plus one :func:`register_metric` call that declares what
ground truth it needs. The evaluator computes every registered metric whose needs the dataset provides.

Ground-truth kinds (:data:`dhkd.data.common.GROUND_TRUTH_KINDS`): ``image_labels`` (good / anomalous per
image), ``pixel_masks`` (a binary mask per anomalous image) and ``loco_channels`` (MVTec LOCO ground-truth
channels with their saturation settings).

Adding a metric::

    @register_metric("my_metric", needs={"image_labels"}, definitions={"my_metric": "what it measures"})
    def my_metric(inputs: MetricInputs) -> MetricOutput:
        return MetricOutput({"my_metric": ...})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ...data.common import GROUND_TRUTH_KINDS
from .spro import LocoGroundTruth


@dataclass(frozen=True)
class MetricInputs:
    """What a metric function receives: full-resolution ``maps`` and image ``scores`` in dataset order, the
    ground truth the dataset provides (fields of kinds it does not provide are None), and a seed."""
    maps: list[np.ndarray]
    scores: np.ndarray
    labels: np.ndarray
    masks: list[np.ndarray] | None = None           # pixel_masks: binary (H0, W0) per image
    loco: list[LocoGroundTruth] | None = None       # loco_channels
    defects_config: dict | None = None              # loco_channels
    seed: int = 0


@dataclass(frozen=True)
class MetricOutput:
    """A metric function's result: ``values`` (output name -> float, a dict of floats, or None where the
    metric is undefined on this data) and optional bookkeeping ``details`` (curves, counts)."""
    values: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """One registered metric: its ``needs`` (ground-truth kinds), its outputs with their definitions, the
    outputs of other metrics it replaces when both apply, and the function computing it."""
    name: str
    needs: frozenset[str]
    definitions: dict[str, str]
    compute: Callable[[MetricInputs], MetricOutput]
    replaces: tuple[str, ...] = ()


@dataclass
class MetricResults:
    """Computed metrics: ``values`` (output name -> value, results.json's "metrics"), ``definitions`` of each
    output present, ``details`` (results.json's "details") and the names of the metrics that ran."""
    values: dict[str, Any]
    definitions: dict[str, str]
    details: dict[str, Any]
    computed: list[str]


_REGISTRY: dict[str, Metric] = {}


def register_metric(name: str, *, needs: Iterable[str], definitions: dict[str, str],
                    replaces: Iterable[str] = ()):
    """Decorator registering ``fn(MetricInputs) -> MetricOutput`` as metric ``name``. ``definitions`` maps
    each output name the function returns to its written definition; ``replaces`` names metrics this one
    supersedes when both apply (e.g. a per-subset image AUROC replacing the plain one)."""
    needs = frozenset(needs)
    unknown = needs - set(GROUND_TRUTH_KINDS)
    if unknown:
        raise ValueError(f"metric {name!r} needs unknown ground-truth kinds {sorted(unknown)}; "
                         f"known: {', '.join(GROUND_TRUTH_KINDS)}")
    if not definitions:
        raise ValueError(f"metric {name!r} must define at least one output")

    def add(fn: Callable[[MetricInputs], MetricOutput]):
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is already registered")
        _REGISTRY[name] = Metric(name, needs, dict(definitions), fn, tuple(replaces))
        return fn

    return add


def registered_metrics() -> dict[str, Metric]:
    """All registered metrics by name (a copy)."""
    return dict(_REGISTRY)


def metrics_for(provides: Iterable[str]) -> list[Metric]:
    """The metrics computable from the ground-truth kinds in ``provides``, minus those replaced by another
    applicable metric, in registration order."""
    provides = frozenset(provides)
    usable = [m for m in _REGISTRY.values() if m.needs <= provides]
    replaced = {r for m in usable for r in m.replaces}
    return [m for m in usable if m.name not in replaced]


def compute_metrics(inputs: MetricInputs, provides: Iterable[str]) -> MetricResults:
    """Run every metric applicable to ``provides`` on ``inputs``."""
    values, definitions, details, computed = {}, {}, {}, []
    for metric in metrics_for(provides):
        out = metric.compute(inputs)
        extra = set(out.values) - set(metric.definitions)
        if extra:
            raise ValueError(f"metric {metric.name!r} returned undeclared outputs {sorted(extra)}")
        clash = set(out.values) & set(values)
        if clash:
            raise ValueError(f"metric {metric.name!r} returned outputs {sorted(clash)} already computed")
        values.update(out.values)
        definitions.update({k: metric.definitions[k] for k in out.values})
        details.update(out.details)
        computed.append(metric.name)
    return MetricResults(values, definitions, details, computed)
