"""Parameter and FLOP report of a DHKD model: convolution/linear/matmul FLOPs per module (PyTorch's
``FlopCounterMode``, which counts a multiply-add as 2 FLOPs) plus the selective scan counted explicitly.

The scan: an SS2D call on an H×W map with d_inner = D channels and state size N makes E = 4·L·D·N state
updates (L = H·W per direction, 4 directions) over P = 4·L·D (direction, position, channel) elements.
Two conventions are reported: 9·E (Mamba / VMamba's ``flops_selective_scan``) and the minimal 6E + 7P:
6 FLOPs per state update (Δ·A, exp, (Δ·u)·B, dA·h, the add, C·h with its sum over n as one
multiply-accumulate) and 7 per element (δ + bias, softplus as exp, add and log, Δ·u, D·u and its add).
Counting runs on the ``meta`` device with the reference ops, so it is instant and needs no memory.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import dhkd_kernels
from dhkd.models import DHKD
from dhkd.models.ss2d import SS2D

MODULES = ("teacher", "encoder", "fccm", "lnet", "gnet")


def scan_work(L: int, D: int, N: int, batch: int = 1) -> dict:
    """State updates E, elements P and both FLOP counts of one SS2D scan (4 directions)."""
    E, P = 4 * batch * L * D * N, 4 * batch * L * D
    return {"L": L, "D": D, "N": N, "E": E, "P": P, "flops_9E": 9 * E, "flops_min": 6 * E + 7 * P}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def flop_report(model: DHKD, image_size: int | tuple[int, int] | None = None, batch: int = 1) -> dict:
    """Parameters and FLOPs per top-level module (and per SS2D call) for one forward of ``batch`` images."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else (image_size or (model.image_size,) * 2)
    with torch.device("meta"):
        meta = type(model)(model.config).eval()
    x = torch.empty(batch, 3, h, w, device="meta")
    meta.check_input(x)
    calls: list[tuple[str, tuple[int, ...]]] = []
    names = {m: n for n, m in meta.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((names[mod], tuple(args[0].shape))))
             for m in meta.modules() if isinstance(m, SS2D)]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), dhkd_kernels.use_backend("reference"), counter:
            meta.raw_maps(x)
    finally:
        for hk in hooks:
            hk.remove()
    by_module = counter.get_flop_counts()  # raw_maps calls the top-level modules: keyed by class name
    modules = {}
    present = [name for name in MODULES if getattr(meta, name) is not None]  # no gnet in the "Lnet only" ablation
    for name in present:
        flops = sum(by_module.get(type(getattr(meta, name)).__name__, {}).values())
        modules[name] = {"params": _params(getattr(model, name)), "conv_linear_flops": int(flops)}
    scans = []
    for mod_name, shape in calls:
        ss2d = meta.get_submodule(mod_name)
        scans.append({"module": mod_name, **scan_work(shape[1] * shape[2], ss2d.d_inner, ss2d.d_state, shape[0])})
    for name in present:
        mine = [s for s in scans if s["module"].startswith(name + ".")]
        modules[name]["scan_flops_9E"] = sum(s["flops_9E"] for s in mine)
        modules[name]["scan_flops_min"] = sum(s["flops_min"] for s in mine)
    total = {"params": _params(model), "conv_linear_flops": int(counter.get_total_flops()),
             "scan_E": sum(s["E"] for s in scans), "scan_flops_9E": sum(s["flops_9E"] for s in scans),
             "scan_flops_min": sum(s["flops_min"] for s in scans)}
    total["flops_with_scan_9E"] = total["conv_linear_flops"] + total["scan_flops_9E"]
    total["flops_with_scan_min"] = total["conv_linear_flops"] + total["scan_flops_min"]
    return {"image_size": [h, w], "batch": batch, "modules": modules, "scans": scans, "total": total}


def format_flop_report(rep: dict) -> str:
    """The report of :func:`flop_report` as a readable table."""
    g = 1e9
    h, w = rep["image_size"]
    lines = [f"parameters and FLOPs for one forward of {rep['batch']} image(s) at {h}×{w} "
             f"(multiply-add = 2 FLOPs)",
             f"{'module':10s} {'params (M)':>11s} {'conv/linear GFLOP':>18s} {'scan 9E GFLOP':>14s} "
             f"{'scan 6E+7P GFLOP':>17s}"]
    for name, m in rep["modules"].items():
        lines.append(f"{name:10s} {m['params'] / 1e6:11.3f} {m['conv_linear_flops'] / g:18.3f} "
                     f"{m['scan_flops_9E'] / g:14.4f} {m['scan_flops_min'] / g:17.4f}")
    t = rep["total"]
    lines.append(f"{'total':10s} {t['params'] / 1e6:11.3f} {t['conv_linear_flops'] / g:18.3f} "
                 f"{t['scan_flops_9E'] / g:14.4f} {t['scan_flops_min'] / g:17.4f}")
    lines.append(f"total with the scan: {t['flops_with_scan_9E'] / g:.3f} GFLOP (9E), "
                 f"{t['flops_with_scan_min'] / g:.3f} GFLOP (6E+7P); scan state updates E = {t['scan_E']:,}")
    for s in rep["scans"]:
        lines.append(f"  {s['module']:24s} L={s['L']:5d} D={s['D']} N={s['N']}  E={s['E']:,}")
    return "\n".join(lines)
