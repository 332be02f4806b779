"""results.json and a readable results.md, with the metric definitions named."""
from __future__ import annotations

import json
from pathlib import Path

METRIC_DEFINITIONS = {
    "image_auroc": "AUROC of image scores (max of the full-resolution map), good = negative; exact and "
                   "tie-aware (Mann-Whitney, equals sklearn roc_auc_score).",
    "pixel_auroc": "AUROC over all pixels of all test images at full resolution; exact and tie-aware.",
    "au_pro": "MVTec AD AU-PRO: regions = 8-connected components of each GT mask; overlap = fraction of a "
              "region's pixels with score >= threshold, averaged over all regions; FPR pooled over all "
              "defect-free pixels; exact curve (one point per distinct score); trapezoid area up to the FPR "
              "limit with linear interpolation at the limit, divided by the limit.",
    "au_spro": "MVTec LOCO AU-sPRO (official algorithm): per GT channel sPRO = min(|map > t and channel| / "
                "saturation area, 1), saturation area = floor(thr*area) if relative else min(thr, area) "
                "(0 counted as 1); mean over all channels of the subset's anomalous images; FPR pooled over "
                "the subset's pixels outside every channel; 50 initial thresholds + up to 10 refinement "
                "rounds (max curve gap 0.01, seeded subsampling to 1e7 scores); area up to each FPR limit "
                "with interpolation, divided by the limit. Subset = one anomaly type + all good images; "
                "mean = average over subsets.",
    "image_auroc_loco_tie_rule": "Image AUROC per LOCO subset as the official LOCO script computes it "
                                 "(its tie rule favours tied scores; equal to image_auroc without ties).",
}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _smoothing(sigma) -> str:
    if sigma is None:
        return "smoothing as in the map files"
    return f"Gaussian smoothing sigma {sigma}" if sigma > 0 else "no smoothing"


def to_markdown(results: dict) -> str:
    m = results["metrics"]
    lines = [f"# {results['dataset']} / {results['category']}", "",
             f"{results['num_images']} test images ({results['num_anomalous']} anomalous); maps at original "
             f"resolution, unclamped, {_smoothing(results['map']['smoothing_sigma'])}; "
             f"source: {results['map']['source']}. Values in %.", ""]
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
        limits = list(m["au_pro"]) if m.get("au_pro") else []
        lines += ["| image AUROC | pixel AUROC | " + " | ".join(f"AU-PRO@{lim}" for lim in limits) + " |",
                  "|---" * (2 + len(limits)) + "|",
                  f"| {_fmt(m['image_auroc'])} | {_fmt(m['pixel_auroc'])} | "
                  + " | ".join(_fmt(m["au_pro"][lim]) for lim in limits) + " |"]
    lines += ["", "## Metric definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in results["metric_definitions"].items()]
    return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=1))
    md_path.write_text(to_markdown(results))
    return json_path, md_path
