"""Typed evaluation results, results.json (written atomically) and a readable results.md.

results.json layout (stable): ``dataset``, ``category``, ``split``, ``num_images``, ``num_anomalous``,
``ground_truth`` (the kinds the dataset provides, e.g. ``["image_labels"]`` for a set without masks),
``map`` {resolution, clamped, smoothing_sigma, source, image_score}, ``metrics`` (name -> value; only the metrics the
ground truth allows), ``metric_definitions``, ``details``, any extra entries (e.g. ``quantiles``), ``images``
[{path, defect, label, score}] and, with overlays, ``overlay_colour_scale``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..persistence import atomic_write_bytes
from .metrics import MetricResults

GROUND_TRUTH_WORDS = {"image_labels": "image labels", "pixel_masks": "pixel masks",
                      "loco_channels": "MVTec LOCO ground-truth channels"}


@dataclass(frozen=True)
class MapInfo:
    """How the scored maps were made."""
    source: str
    smoothing_sigma: float | None
    resolution: str = "original image size"
    clamped: bool = False
    image_score_top: float = 0.0   # the image score: the map's maximum (0) or the mean of its top P %


@dataclass(frozen=True)
class ImageScore:
    """One test image's score (the maximum of its map, or the mean of its top ``image_score_top`` %)."""
    path: str
    defect: str
    label: int
    score: float


@dataclass
class EvaluationResult:
    """Everything one evaluation produced; :meth:`to_dict` is the results.json content."""
    dataset: str
    category: str
    split: str
    ground_truth: tuple[str, ...]
    map: MapInfo
    metrics: MetricResults
    images: list[ImageScore]
    extra: dict[str, Any] = field(default_factory=dict)
    overlay_colour_scale: dict[str, float] | None = None

    @property
    def num_images(self) -> int:
        """How many images were evaluated."""
        return len(self.images)

    @property
    def num_anomalous(self) -> int:
        """How many of the evaluated images are anomalous."""
        return sum(im.label for im in self.images)

    def to_dict(self) -> dict:
        """The results.json layout (see the module docstring)."""
        out = {"dataset": self.dataset, "category": self.category, "split": self.split,
               "num_images": self.num_images, "num_anomalous": self.num_anomalous,
               "ground_truth": list(self.ground_truth),
               "map": {"resolution": self.map.resolution, "clamped": self.map.clamped,
                       "smoothing_sigma": self.map.smoothing_sigma, "source": self.map.source,
                       "image_score": _image_score_rule(self.map.image_score_top)},
               "metrics": self.metrics.values, "metric_definitions": self.metrics.definitions,
               "details": self.metrics.details, **self.extra,
               "images": [{"path": im.path, "defect": im.defect, "label": im.label, "score": im.score}
                          for im in self.images]}
        if self.overlay_colour_scale is not None:
            out["overlay_colour_scale"] = dict(self.overlay_colour_scale)
        return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _image_score_rule(top_percent: float) -> str:
    return "maximum of the map" if top_percent == 0 else f"mean of the map's top {top_percent:g} %"


def _smoothing(sigma) -> str:
    if sigma is None:
        return "smoothing as in the map files"
    return f"Gaussian smoothing sigma {sigma}" if sigma > 0 else "no smoothing"


def _ground_truth_line(kinds) -> str:
    if not kinds:
        return ""
    words = ", ".join(GROUND_TRUTH_WORDS.get(k, k) for k in kinds)
    if "pixel_masks" not in kinds and "loco_channels" not in kinds:
        return f"Ground truth: {words} only (no pixel masks): image-level metrics only."
    return f"Ground truth: {words}."


def _flat_columns(m: dict) -> tuple[list[str], list[str]]:
    """Header and value cells of the non-LOCO table: scalar metrics, then one column per key of dict ones."""
    names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "au_pro": "AU-PRO"}
    head, cells = [], []
    for key, value in m.items():
        label = names.get(key, key)
        if isinstance(value, dict):
            for sub, v in value.items():
                head.append(f"{label}@{sub}")
                cells.append(_fmt(v))
        else:
            head.append(label)
            cells.append(_fmt(value))
    return head, cells


def to_markdown(results: dict) -> str:
    """results.md from a results.json dict."""
    m = results["metrics"]
    lines = [f"# {results['dataset']} / {results['category']}", "",
             f"{results['num_images']} test images ({results['num_anomalous']} anomalous); maps at original "
             f"resolution, unclamped, {_smoothing(results['map']['smoothing_sigma'])}; "
             f"image score: {results['map'].get('image_score', _image_score_rule(0))}; "
             f"source: {results['map']['source']}. Values in %.", ""]
    gt = _ground_truth_line(results.get("ground_truth", ()))
    if gt:
        lines += [gt, ""]
    if "au_spro" in m:
        limits = list(m["au_spro"]["mean"])
        lines += ["| subset | image AUROC | image AUROC (LOCO tie rule) | "
                  + " | ".join(f"AU-sPRO@{lim}" for lim in limits) + " |",
                  "|---" * (3 + len(limits)) + "|"]
        for subset in m["au_spro"]:
            lines.append(f"| {subset} | {_fmt(m['image_auroc'][subset])} | "
                         f"{_fmt(m['image_auroc_loco_tie_rule'][subset])} | "
                         + " | ".join(_fmt(m["au_spro"][subset][lim]) for lim in limits) + " |")
    else:
        head, cells = _flat_columns(m)
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|", "| " + " | ".join(cells) + " |"]
    lines += ["", "## Metric definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in results["metric_definitions"].items()]
    return "\n".join(lines) + "\n"


def write_results(results: EvaluationResult | dict, output_dir: Path) -> tuple[Path, Path]:
    """Write results.json and results.md into ``output_dir`` (atomically)."""
    data = results.to_dict() if isinstance(results, EvaluationResult) else results
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    atomic_write_bytes(json_path, json.dumps(data, indent=1).encode())
    atomic_write_bytes(md_path, to_markdown(data).encode())
    return json_path, md_path
