"""Anomaly detection metrics: exact AUROC, AU-PRO (MVTec AD) and AU-sPRO (MVTec LOCO AD), and the registry
(:mod:`.registry`) through which the evaluator picks them by the ground truth a dataset provides."""
from . import standard  # noqa: F401  (registers the built-in metrics)
from .auroc import auroc, auroc_from_groups, loco_classification_auroc, pixel_auroc
from .curve import area_up_to
from .pro import au_pro, pro_curve
from .registry import (Metric, MetricInputs, MetricOutput, MetricResults, compute_metrics, metrics_for,
                       register_metric, registered_metrics)
from .spro import MAX_FPRS, LocoGroundTruth, loco_metrics

__all__ = ["MAX_FPRS", "LocoGroundTruth", "Metric", "MetricInputs", "MetricOutput", "MetricResults",
           "area_up_to", "au_pro", "auroc", "auroc_from_groups", "compute_metrics", "loco_classification_auroc",
           "loco_metrics", "metrics_for", "pixel_auroc", "pro_curve", "register_metric", "registered_metrics"]
