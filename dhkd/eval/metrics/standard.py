"""The built-in metrics, registered with :func:`dhkd.eval.metrics.registry.register_metric`."""
from __future__ import annotations

from .auroc import auroc, pixel_auroc
from .pro import au_pro
from .registry import MetricInputs, MetricOutput, register_metric
from .spro import MAX_FPRS, loco_metrics

PRO_LIMIT = 0.3
LOCO_OUTPUTS = ("image_auroc", "image_auroc_loco_tie_rule", "au_spro")


@register_metric("image_auroc", needs={"image_labels"}, definitions={
    "image_auroc": "AUROC of image scores (each from the full-resolution map by the rule in map.image_score: "
                   "its maximum, or the mean of its top P %), good = negative; exact and tie-aware "
                   "(Mann-Whitney, equals sklearn roc_auc_score)."})
def image_auroc(inputs: MetricInputs) -> MetricOutput:
    """Image AUROC; None when the test split lacks good or anomalous images."""
    labels = inputs.labels
    return MetricOutput({"image_auroc": auroc(inputs.scores, labels) if 0 < labels.sum() < labels.size else None})


def _has_positive_pixels(inputs: MetricInputs) -> bool:
    return any(m.any() for m in inputs.masks)


@register_metric("pixel_auroc", needs={"pixel_masks"}, definitions={
    "pixel_auroc": "AUROC over all pixels of all test images at full resolution; exact and tie-aware."})
def pixel_auroc_metric(inputs: MetricInputs) -> MetricOutput:
    """Pixel AUROC; None when no mask has a positive pixel."""
    return MetricOutput({"pixel_auroc": pixel_auroc(inputs.maps, inputs.masks)
                         if _has_positive_pixels(inputs) else None})


@register_metric("au_pro", needs={"pixel_masks"}, definitions={
    "au_pro": "MVTec AD AU-PRO: regions = 8-connected components of each GT mask; overlap = fraction of a "
              "region's pixels with score >= threshold, averaged over all regions; FPR pooled over all "
              "defect-free pixels; exact curve (one point per distinct score); trapezoid area up to the FPR "
              "limit with linear interpolation at the limit, divided by the limit."})
def au_pro_metric(inputs: MetricInputs) -> MetricOutput:
    """AU-PRO up to FPR 0.3, keyed by the limit; None when no mask has a positive pixel."""
    return MetricOutput({"au_pro": {str(PRO_LIMIT): au_pro(inputs.maps, inputs.masks, PRO_LIMIT)}
                         if _has_positive_pixels(inputs) else None})


@register_metric("loco", needs={"image_labels", "loco_channels"}, replaces=("image_auroc",), definitions={
    "image_auroc": "AUROC of image scores (by the rule in map.image_score) per LOCO subset (one anomaly type "
                   "+ all good images) and their mean; exact and tie-aware.",
    "image_auroc_loco_tie_rule": "Image AUROC per LOCO subset as the official LOCO script computes it "
                                 "(its tie rule favours tied scores; equal to image_auroc without ties).",
    "au_spro": "MVTec LOCO AU-sPRO (official algorithm): per GT channel sPRO = min(|map > t and channel| / "
               "saturation area, 1), saturation area = floor(thr*area) if relative else min(thr, area) "
               "(0 counted as 1); mean over all channels of the subset's anomalous images; FPR pooled over "
               "the subset's pixels outside every channel; 50 initial thresholds + up to 10 refinement "
               "rounds (max curve gap 0.01, seeded subsampling to 1e7 scores); area up to each FPR limit "
               "with interpolation, divided by the limit. Subset = one anomaly type + all good images; "
               "mean = average over subsets."})
def loco(inputs: MetricInputs) -> MetricOutput:
    """MVTec LOCO AD's per-subset image AUROC (both tie rules) and AU-sPRO; the curve as details."""
    res = loco_metrics(inputs.maps, inputs.loco, inputs.defects_config, MAX_FPRS, seed=inputs.seed,
                       image_scores=inputs.scores)
    return MetricOutput({k: res[k] for k in LOCO_OUTPUTS}, {k: v for k, v in res.items() if k not in LOCO_OUTPUTS})
