"""Side-by-side comparison of DHKD, its ablations and the baselines on the same splits, evaluator and metrics.

Each method is fitted on the training split (good images), calibrated on the validation split where it
needs it, and scored on the test split by :mod:`dhkd.eval.evaluator` (full-resolution maps, the metrics the
dataset's ground truth allows). Per method and dataset: the evaluator's results.json, the fitting time
(training, teacher statistics and calibration; teacher distillation excluded and reported apart; DHKD rows
after the first of a dataset reuse its teacher statistics, which their notes say) and the
inference time per image at batch 1 (mean over the timed test images after one warm-up, fp32, this process's
threads). ``grid_sigma`` > 0 smooths every method's maps at its own resolution before they are resized (the
saved grids stay unsmoothed). Image scores are the map's maximum, except for a DHKD row whose model scores
with the mean of the map's top P % (``image_score_top``, as the CPU recipe's ``dhkd-recipe``).
``compare(...)`` writes ``<output>/<dataset>_<category>/<method>/results.json`` and ``<output>/compare.md`` /
``compare.json``.

Methods (:data:`METHODS`): ``knn`` (training-free, on the backbone's descriptors), ``knn-teacher`` (the
same on the DHKD teacher's descriptors: how much the teacher keeps), ``efficientad-s`` / ``efficientad-m``
(same teacher and steps as DHKD: a PDN teacher file or a backbone teacher), ``dhkd`` (the preset's full model)
and its ablations ``dhkd-no-hstm``, ``dhkd-no-scmm``, ``dhkd-no-fccm``.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..data import build_dataset
from ..eval.evaluator import evaluate_map_list
from ..persistence import atomic_write_bytes
from ..train.config import BACKBONE_TEACHER_PREFIX, backbone_name
from ..train.recipes import RECIPES

_PRESET_TEACHER = {"paper": "medium", "small": "small", "tiny": "small"}
DHKD_ABLATIONS = {"dhkd": {}, "dhkd-no-hstm": {"use_hstm": False}, "dhkd-no-scmm": {"use_scmm": False},
                  "dhkd-no-fccm": {"use_fccm": False}, "dhkd-no-gnet": {"use_gnet": False},
                  "dhkd-recipe": RECIPES["cpu"]["model_overrides"]}  # the CPU recipe's model (docs/recipe.md)


@dataclass(frozen=True)
class DataSpec:
    """One dataset category to compare on (``root`` as :func:`dhkd.data.build_dataset` takes it)."""
    dataset: str
    root: str
    category: str

    @classmethod
    def parse(cls, text: str) -> "DataSpec":
        """``dataset:root:category``, e.g. ``mvtec_ad:/data/mvtec_ad:bottle`` or ``elpv:installed:all``."""
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"dataset spec {text!r}: expected dataset:root:category")
        return cls(*parts)

    @property
    def key(self) -> str:
        """The folder name of this dataset's results: ``<dataset>_<category>``."""
        return f"{self.dataset}_{self.category}"


@dataclass
class CompareConfig:
    """Budget and settings shared by all methods (the same steps and lr for every trained method)."""
    output: str = "runs/compare"
    teachers: dict[str, str] = field(default_factory=dict)   # DataSpec.key (or "*") -> teacher weights
    preset: str = "small"
    steps: int = 2500
    lr: float = 5e-4
    lr_decay_step: int = 2000
    time_limit_minutes: float = 0.0
    lr_decay_time_fraction: float = 0.0  # > 0 (with a time limit): every trained method also decays its lr then
    image_size: int = 256
    seed: int = 0
    timed_images: int = 20
    knn_bank_size: int = 20000
    knn_backbone: str = "efficientnet-lite0"  # the knn row's backbone (dhkd.teacher.backbones.BACKBONES)
    save_grids: bool = False    # also save the validation and test maps at the scorer's own resolution
    grid_sigma: float = 0.0     # Gaussian smoothing of every method's maps at its own resolution, in cells
    cache_limit_mb: int = 4096  # DHKD rows keep the teacher outputs in memory up to this size (TrainConfig's field)


@dataclass
class MethodResult:
    """One row of the comparison."""
    method: str
    dataset: str
    category: str
    metrics: dict
    fit_seconds: float
    ms_per_image: float
    steps: int | None
    teacher: str | None
    results_path: str
    notes: str = ""


@dataclass
class FittedMethod:
    """What fitting a method yields: its map function (ImageNet-normalised batch -> (b, 1, h, w) maps),
    fit time, training steps (None: training-free), teacher file (None: none), a note for the table and its
    image score's rule (``image_score_top``: 0 = the map's maximum; a DHKD model's own config value)."""
    map_fn: Callable[[torch.Tensor], torch.Tensor]
    fit_seconds: float
    steps: int | None
    teacher: str | None
    notes: str
    image_score_top: float = 0.0


def _teacher_for(spec: DataSpec, cfg: CompareConfig, method: str = "") -> str:
    """The teacher of ``spec``'s rows; ``method`` names a row that needs a PDN teacher file (the knn-teacher
    row: with a backbone teacher it would repeat the knn row)."""
    path = cfg.teachers.get(spec.key) or cfg.teachers.get("*")
    if not path:
        raise ValueError(f"no teacher for {spec.key}: pass --teacher {spec.key}=PATH (or --teacher PATH); "
                         "see docs/recipe.md for distilling one on the training split")
    if method and path.startswith(BACKBONE_TEACHER_PREFIX):
        raise ValueError(f"{method} needs a PDN teacher file, but the teacher of {spec.key} is {path!r} "
                         "(the knn row already scores the backbone's descriptors)")
    return path


@torch.no_grad()
def time_per_image(map_fn: Callable, dataset, n: int) -> float:
    """Mean milliseconds of ``map_fn`` on single images (the first ``n`` of ``dataset``, one warm-up)."""
    images = [dataset[i]["image"][None] for i in range(min(n, len(dataset)))]
    map_fn(images[0])
    t0 = time.perf_counter()
    for x in images:
        map_fn(x)
    return 1000 * (time.perf_counter() - t0) / len(images)


@torch.no_grad()
def grid_maps(map_fn: Callable, dataset, batch_size: int = 8) -> np.ndarray:
    """``map_fn``'s maps of every image of ``dataset`` (dataset order) at its own resolution, (n, 1, h, w)."""
    maps = []
    for i in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[j]["image"] for j in range(i, min(i + batch_size, len(dataset)))])
        maps.append(map_fn(x).float().numpy())
    return np.concatenate(maps)


def save_npy(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a .npy file atomically."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def _fit_knn(on_teacher: bool):
    def fit(spec: DataSpec, cfg: CompareConfig, out: Path, shared: dict):
        from .knn import KNNConfig, KNNScorer

        teacher = _teacher_for(spec, cfg, "knn-teacher") if on_teacher else ""
        scorer = KNNScorer(KNNConfig(backbone=cfg.knn_backbone, image_size=cfg.image_size,
                                     bank_size=cfg.knn_bank_size, seed=cfg.seed,
                                     teacher=teacher, teacher_size=_PRESET_TEACHER.get(cfg.preset, "small")))
        t0 = time.time()
        scorer.fit(build_dataset(spec.dataset, spec.root, spec.category, "train", cfg.image_size, cfg.seed))
        what = "teacher" if on_teacher else f"{cfg.knn_backbone} backbone"
        return FittedMethod(scorer.anomaly_map, time.time() - t0, None, teacher or None,
                            f"{what} descriptors, memory bank {scorer.bank.shape[0]} patches")
    return fit


def _fit_efficientad(size: str):
    def fit(spec: DataSpec, cfg: CompareConfig, out: Path, shared: dict):
        from ..persistence import load_teacher
        from .efficientad import EfficientAD, EfficientADConfig

        teacher_path = _teacher_for(spec, cfg)
        backbone = backbone_name(teacher_path)
        model = EfficientAD(EfficientADConfig(size=size, image_size=cfg.image_size, steps=cfg.steps, seed=cfg.seed,
                                              time_limit_minutes=cfg.time_limit_minutes, teacher_backbone=backbone,
                                              lr_decay_time_fraction=cfg.lr_decay_time_fraction),
                            None if backbone else load_teacher(teacher_path, size=size, padding=False))
        train = build_dataset(spec.dataset, spec.root, spec.category, "train", cfg.image_size, cfg.seed)
        val = build_dataset(spec.dataset, spec.root, spec.category, "validation", cfg.image_size, cfg.seed)
        model.fit(train, val)
        losses = ", ".join(f"{k} {v:.4f}" for k, v in model.final_losses.items())
        decay = "not decayed" if model.lr_decay_step is None else f"x0.1 from step {model.lr_decay_step}"
        return FittedMethod(model.anomaly_map, model.train_seconds, model.steps_done, teacher_path,
                            f"EfficientAD lr 1e-4 (its own recipe), {decay}; final losses {losses}")
    return fit


def _fit_dhkd(overrides: dict):
    def fit(spec: DataSpec, cfg: CompareConfig, out: Path, shared: dict):
        from ..persistence import load_model
        from ..train.config import TrainConfig
        from ..train.trainer import Trainer

        teacher_path = _teacher_for(spec, cfg)
        tcfg = TrainConfig(dataset=spec.dataset, root=spec.root, category=spec.category, preset=cfg.preset,
                           model_overrides=dict(overrides), teacher=teacher_path, steps=cfg.steps, lr=cfg.lr,
                           lr_decay_step=cfg.lr_decay_step, time_limit_minutes=cfg.time_limit_minutes,
                           lr_decay_time_fraction=cfg.lr_decay_time_fraction,
                           image_size=cfg.image_size, seed=cfg.seed, device="cpu", run_dir=str(out / "run"),
                           checkpoint_every=max(cfg.steps, 1), evaluate=False, cache_limit_mb=cfg.cache_limit_mb)
        stats_key = ("teacher_stats", spec.key, teacher_path)  # every DHKD row of a dataset shares its teacher
        trainer = Trainer(tcfg, teacher_stats=shared.get(stats_key))
        t0 = time.time()
        summary = trainer.run()  # trains, then fits the map quantiles on the validation good images
        model = load_model(Path(summary["run_dir"]) / "model.safetensors").eval()
        shared.setdefault(stats_key, (model.teacher_mean.clone(), model.teacher_std.clone()))

        def map_fn(x):
            map_l, map_g = model.raw_maps(x)
            return model.normalized_map(map_l, map_g, size=tuple(map_l.shape[-2:]))

        losses = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_losses"].items())
        reused = "; teacher statistics of an earlier row (not in fit s)" if trainer.teacher_stats is not None else ""
        return FittedMethod(map_fn, time.time() - t0, summary["steps"], teacher_path,
                            f"preset {cfg.preset}, overrides {overrides or 'none'}; final losses {losses}{reused}",
                            image_score_top=model.image_score_top)
    return fit


METHODS: dict[str, Callable[[DataSpec, CompareConfig, Path, dict], FittedMethod]] = {
    "knn": _fit_knn(False), "knn-teacher": _fit_knn(True),
    "efficientad-s": _fit_efficientad("small"), "efficientad-m": _fit_efficientad("medium"),
    **{name: _fit_dhkd(o) for name, o in DHKD_ABLATIONS.items()}}


def run_method(method: str, spec: DataSpec, cfg: CompareConfig, shared: dict | None = None) -> MethodResult:
    """Fit, time and evaluate one method on one dataset category. ``shared`` carries what rows of one
    comparison reuse (the DHKD teacher's channel statistics per dataset and teacher file)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    out = Path(cfg.output) / spec.key / method
    f = METHODS[method](spec, cfg, out, {} if shared is None else shared)
    map_fn = f.map_fn
    test = build_dataset(spec.dataset, spec.root, spec.category, "test", cfg.image_size, cfg.seed)
    ms = time_per_image(map_fn, test, cfg.timed_images)
    grids = grid_maps(map_fn, test)
    if cfg.save_grids:
        val = build_dataset(spec.dataset, spec.root, spec.category, "validation", cfg.image_size, cfg.seed)
        save_npy(grid_maps(map_fn, val), out / "grids_validation_grid.npy")
        save_npy(grids, out / "grids_test_grid.npy")
    if cfg.grid_sigma > 0:
        grids = gaussian_filter(grids, sigma=(0, 0, cfg.grid_sigma, cfg.grid_sigma)).astype(np.float32)
    masks = [test.mask(i) for i in range(len(test))]
    maps = [F.interpolate(torch.from_numpy(g[None]), size=gt.shape[1:], mode="bilinear",
                          align_corners=False)[0, 0].numpy() for g, gt in zip(grids, masks)]
    res = evaluate_map_list(test, maps, masks, out, source=method, smooth_sigma=0.0, seed=cfg.seed,
                            extra={"method": method, "grid_sigma": cfg.grid_sigma,
                                   "fit_seconds": round(f.fit_seconds, 1), "ms_per_image": round(ms, 1),
                                   "steps": f.steps, "teacher": f.teacher, "notes": f.notes},
                            image_score_top=f.image_score_top)
    return MethodResult(method, spec.dataset, spec.category, res["metrics"], f.fit_seconds, ms, f.steps, f.teacher,
                        str(out / "results.json"), f.notes)


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, dict):  # AU-PRO keyed by limit, or a LOCO per-subset dict: report the mean / the only one
        v = v.get("mean", next(iter(v.values())) if len(v) == 1 else None)
        return _cell(v)
    return f"{100 * v:.2f}"


def to_markdown(rows: list[MethodResult]) -> str:
    """One table per dataset category: metrics (%), fit time, inference ms/image, steps, notes."""
    lines = []
    for key in dict.fromkeys((r.dataset, r.category) for r in rows):
        group = [r for r in rows if (r.dataset, r.category) == key]
        names = list(dict.fromkeys(k for r in group for k in r.metrics))
        lines += [f"## {key[0]} / {key[1]}", "",
                  "| method | " + " | ".join(names) + " | fit s | ms/image | steps | notes |",
                  "|---" * (len(names) + 5) + "|"]
        for r in group:
            lines.append(f"| {r.method} | " + " | ".join(_cell(r.metrics.get(k)) for k in names)
                         + f" | {r.fit_seconds:.0f} | {r.ms_per_image:.1f} | {r.steps if r.steps is not None else '-'}"
                         f" | {r.notes} |")
        lines.append("")
    return "\n".join(lines)


def compare(specs: list[DataSpec], methods: list[str], cfg: CompareConfig) -> list[MethodResult]:
    """Run every method on every dataset category, writing the tables after each row (a stopped run keeps
    the finished rows)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {', '.join(METHODS)}")
    rows: list[MethodResult] = []
    out, shared = Path(cfg.output), {}
    for spec in specs:
        for method in methods:
            rows.append(run_method(method, spec, cfg, shared))
            atomic_write_bytes(out / "compare.json",
                               json.dumps({"config": asdict(cfg), "rows": [asdict(r) for r in rows]},
                                          indent=1).encode())
            atomic_write_bytes(out / "compare.md", to_markdown(rows).encode())
    return rows
