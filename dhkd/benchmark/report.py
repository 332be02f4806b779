"""The benchmark's derived numbers and output: ratios between models, the targets, the on-screen table and
the results file name."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import DHKD, EFFICIENTAD, REFERENCE

PAPER_MS, GPU_AIM_MS, CPU_SS2D_MS = 7.6, 2.0, 15.0


def variant(model: str, mode: str) -> str:
    """The row name of ``model`` run in ``mode``: ``model[mode]``."""
    return f"{model}[{mode}]"


def _ratio(a: dict | None, b: dict | None) -> float | None:
    return a["median_ms"] / b["median_ms"] if a and b else None


def _best(latency: dict, model: str) -> tuple[str, dict] | None:
    rows = [(v["mode"], v) for v in latency.values() if v["model"] == model]
    return min(rows, key=lambda r: r[1]["median_ms"]) if rows else None


def ratios(latency: dict, modes: list[str], conv: dict | None = None) -> dict:
    """DHKD / EfficientAD-M per mode and best/best; DHKD kernels / reference per mode (medians); with
    ``conv`` (per-variant convolution times) also DHKD's smallest convolution time over EfficientAD-M's best
    whole forward: above 1, no DHKD mode can reach EfficientAD-M's best at equal convolution speed."""
    get = latency.get
    res = {"dhkd_over_efficientad_m": {m: _ratio(get(variant(DHKD, m)), get(variant(EFFICIENTAD, m)))
                                       for m in modes if get(variant(EFFICIENTAD, m))},
           "kernels_over_reference": {m: _ratio(get(variant(DHKD, m)), get(variant(REFERENCE, m)))
                                      for m in modes if get(variant(REFERENCE, m))}}
    bd, be = _best(latency, DHKD), _best(latency, EFFICIENTAD)
    if bd and be:
        res["best_over_best"] = {"dhkd_mode": bd[0], "dhkd_ms": bd[1]["median_ms"], "efficientad_m_mode": be[0],
                                 "efficientad_m_ms": be[1]["median_ms"], "ratio": _ratio(bd[1], be[1])}
        convs = {n: c["conv_ms"] for n, c in (conv or {}).items() if n.startswith(DHKD + "[")}
        if convs:
            name = min(convs, key=convs.get)
            res["dhkd_convolutions_over_efficientad_m_best"] = {
                "variant": name, "conv_ms": convs[name], "efficientad_m_ms": be[1]["median_ms"],
                "ratio": convs[name] / be[1]["median_ms"]}
    return res


def targets(preset: str, out: dict, device: torch.device) -> dict:
    """The issue's targets for this preset and device, with the measured values and whether they are met."""
    bb = out["ratios"].get("best_over_best")
    best = _best(out["latency"], DHKD)
    res = {}
    if bb:
        res["best_over_best_le_1"] = {"value": bb["ratio"], "target": 1.0, "met": bb["ratio"] <= 1.0}
    if device.type == "cpu":
        ss = [v["module_ms"] for k, v in out["ss2d"].items() if k.startswith(DHKD + "[")]
        if ss:
            res["ss2d_ms_le_15"] = {"value": min(ss), "target": CPU_SS2D_MS, "met": min(ss) <= CPU_SS2D_MS}
    elif best and preset == "paper":
        ms = best[1]["median_ms"]
        res["paper_ms_le_7.6"] = {"value": ms, "target": PAPER_MS, "met": ms <= PAPER_MS}
        res["aim_ms_le_2.0"] = {"value": ms, "target": GPU_AIM_MS, "met": ms <= GPU_AIM_MS}
    return res


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def format_report(result: dict) -> str:
    """The on-screen table: latency, ratios, agreement, SS2D, throughput and targets per preset."""
    env, lines = result["environment"], []
    dev = env.get("gpu") or env["cpu"]
    lines.append(f"DHKD latency benchmark  {env['date']}  {env['host']}  {dev}  torch {env['torch']}  "
                 f"threads {env['torch_threads']}" + ("  (shared machine)" if env["shared_machine"] else ""))
    lines.append(f"timed: {result['settings']['timed_region']}")
    for preset, p in result["presets"].items():
        lines.append(f"\n== {preset} ({p['image_size']}², batch 1) ==")
        lines.append(f"{'variant':32s} {'median':>9s} {'p90':>9s} {'mean':>9s}  {'vs EAD-M':>8s}  "
                     f"{'max|Δmap|':>9s} {'r':>8s} {'ρ score':>7s}")
        for name, v in p["latency"].items():
            ratio = p["ratios"]["dhkd_over_efficientad_m"].get(v["mode"]) if v["model"] == DHKD else None
            a = p["agreement"].get(name, {})
            lines.append(f"{name:32s} {v['median_ms']:8.1f}ms {v['p90_ms']:8.1f}ms {v['mean_ms']:8.1f}ms  "
                         f"{_fmt(ratio, '.3f'):>8s}  {_fmt(a.get('max_abs_diff'), '.2e'):>9s} "
                         f"{_fmt(a.get('pearson_r'), '.6f'):>8s} {_fmt(a.get('score_spearman'), '.3f'):>7s}")
        bb = p["ratios"].get("best_over_best")
        if bb:
            lines.append(f"best/best: DHKD {bb['dhkd_mode']} {bb['dhkd_ms']:.1f} ms / EfficientAD-M "
                         f"{bb['efficientad_m_mode']} {bb['efficientad_m_ms']:.1f} ms = {bb['ratio']:.3f}")
        cb = p["ratios"].get("dhkd_convolutions_over_efficientad_m_best")
        if cb:
            lines.append(f"DHKD's convolutions alone ({cb['variant']}): {cb['conv_ms']:.1f} ms = {cb['ratio']:.3f} × "
                         f"EfficientAD-M's best whole forward")
        kr = p["ratios"]["kernels_over_reference"]
        if kr:
            lines.append("kernels/reference: " + ", ".join(f"{m} {r:.3f}" for m, r in kr.items()))
        for name, s in p["ss2d"].items():
            lines.append(f"SS2D in one forward, {name}: modules {s['module_ms']:.1f} ms, scan op "
                         f"{_fmt(s['scan_op_ms'])} ms ({s['calls']} calls)")
        for name, c in p["conv"].items():
            lines.append(f"convolutions in one forward, {name}: {c['conv_ms']:.1f} of {c['total_ms']:.1f} ms "
                         f"({100 * c['conv_share']:.0f} %)")
        for name, t in p["throughput"].items():
            lines.append(f"throughput {name} batch {t['batch']}: {t['images_per_s']:.2f} img/s "
                         f"(median {t['median_ms']:.0f} ms)")
        lines.append("backends: " + "; ".join(f"{m}: " + ", ".join(f"{op}={b}" for op, b in ob.items())
                                              for m, ob in p["backends"].items()))
        for name, t in p["targets"].items():
            lines.append(f"target {name}: {t['value']:.3f} vs {t['target']} -> {'MET' if t['met'] else 'missed'}")
        if env.get("gpu") and preset == "paper":
            best = _best(p["latency"], DHKD)
            lines.append(f"paper target: 7.6 ms per 256² image (A100); here best {best[0]} "
                         f"{best[1]['median_ms']:.2f} ms")
    skipped = result["settings"]["skipped_modes"]
    if skipped:
        lines.append("\nskipped modes: " + "; ".join(f"{m} ({r})" for m, r in skipped.items()))
    return "\n".join(lines)


def results_path(result: dict, directory: Path) -> Path:
    """``latency_<date>_<host>.json`` in ``directory``; ``_2``, ``_3``, … when that file already exists."""
    date = result["environment"]["date"][:10]
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in result["environment"]["host"])
    path, n = Path(directory) / f"latency_{date}_{host}.json", 2
    while path.exists():
        path, n = Path(directory) / f"latency_{date}_{host}_{n}.json", n + 1
    return path
