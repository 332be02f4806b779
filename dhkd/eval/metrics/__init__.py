"""Anomaly detection metrics: exact AUROC, AU-PRO (MVTec AD) and AU-sPRO (MVTec LOCO AD)."""
from .auroc import auroc, auroc_from_groups, loco_classification_auroc, pixel_auroc
from .curve import area_up_to
from .pro import au_pro, pro_curve
from .spro import MAX_FPRS, LocoGroundTruth, loco_metrics

__all__ = ["MAX_FPRS", "LocoGroundTruth", "area_up_to", "au_pro", "auroc", "auroc_from_groups",
           "loco_classification_auroc", "loco_metrics", "pixel_auroc", "pro_curve"]
