"""Training many categories: one after another, or spread over the ranks of a ``torchrun`` launch.

Each rank takes every world_size-th category; at the end the per-category summaries are gathered on
rank 0, which prints a table and writes it to ``<output>/<dataset>/summary-<timestamp>.{json,md}``.
"""
from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist

from dhkd.persistence import atomic_write_bytes, atomic_write_json

from .config import TrainConfig
from .trainer import Evaluator, Trainer, claim_new_path

COLUMNS = ("image_auroc", "pixel_auroc", "au_pro")


def resolve_categories(cfg: TrainConfig) -> list[str]:
    """``a,b,c`` or ``all`` (every folder under the root that has a train/ or an ok-train layout; for ELPV,
    whose categories are cell types rather than folders, ``all`` is its own category of every cell)."""
    if cfg.category.strip() == "all":
        if cfg.dataset == "elpv":
            return ["all"]
        root = Path(cfg.root)
        cats = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir()) if root.is_dir() \
            else []
        if not cats:
            raise ValueError(f"--category all: no category folders with a train/ folder under {root}")
        return cats
    cats = [c.strip() for c in cfg.category.split(",") if c.strip()]
    if len(set(cats)) != len(cats):
        raise ValueError(f"duplicate categories in {cfg.category!r}")
    return cats


def _row(category: str, summary: dict) -> dict:
    metrics = summary.get("results", {}).get("metrics", {})
    row = {"category": category, "steps": summary["steps"], "train_seconds": summary["train_seconds"],
           "run_dir": summary["run_dir"]}
    for key in COLUMNS:
        value = metrics.get(key)
        row[key] = value.get("0.3") if isinstance(value, dict) else value
    return row


def _table(rows: list[dict]) -> str:
    head = "| category | steps | train s | image AUROC | pixel AUROC | AU-PRO@0.3 |\n|---|---|---|---|---|---|\n"
    fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
    body = "".join(f"| {r['category']} | {r['steps']} | {r['train_seconds']:.0f} | {fmt(r['image_auroc'])} | "
                   f"{fmt(r['pixel_auroc'])} | {fmt(r['au_pro'])} |\n" for r in rows)
    scored = [r for r in rows if r["image_auroc"] is not None]
    if len(scored) > 1:
        mean = lambda k: sum(r[k] for r in scored if r[k] is not None) / max(1, sum(r[k] is not None for r in scored))  # noqa: E731,E501
        body += f"| mean | | | {mean('image_auroc'):.4f} | {mean('pixel_auroc'):.4f} | {mean('au_pro'):.4f} |\n"
    return head + body


def claim_summary(folder: Path, stamp: str) -> Path:
    """A new stem ``folder/summary-<stamp>`` (``-2``, ``-3``, ... when taken) for the summary's .json and .md.

    The .json is created exclusively to reserve the name, so two launches finishing in the same second with
    the same output never overwrite each other's summary; it is then replaced atomically with the table.
    """
    return claim_new_path(folder, f"summary-{stamp}", lambda base: base.with_suffix(".json").open("x").close(),
                          "summary")


def world_size() -> int:
    """Ranks of this ``torchrun`` launch (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def train_categories(cfg: TrainConfig, evaluate_test: Evaluator | None = None) -> list[dict]:
    """Train every configured category (split over torchrun ranks); one summary row per category.

    ``evaluate_test`` evaluates each category's test split when ``cfg.evaluate`` is set (see
    :class:`~dhkd.train.trainer.Evaluator`)."""
    categories = resolve_categories(cfg)
    if cfg.run_dir and len(categories) > 1:
        raise ValueError("run_dir names one run; with several categories use output instead")
    world = world_size()
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available() and cfg.device == "auto":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            cfg = dataclasses.replace(cfg, device=f"cuda:{local}")
    stamp = [datetime.now().strftime("%Y%m%d-%H%M%S")]
    if distributed:
        dist.broadcast_object_list(stamp, src=0)
    rows = []
    try:
        for category in categories[rank::world]:
            sub = dataclasses.replace(cfg, category=category)
            trainer = Trainer(sub, timestamp=stamp[0], evaluate_test=evaluate_test)
            rows.append(_row(category, trainer.run()))
        if distributed:
            gathered: list = [None] * world
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
    finally:
        if distributed:
            dist.destroy_process_group()
    rows.sort(key=lambda r: categories.index(r["category"]))
    if rank == 0 and len(categories) > 1:
        base = claim_summary(Path(cfg.output) / cfg.dataset, stamp[0])
        table = _table(rows)
        atomic_write_json(base.with_suffix(".json"), rows)
        atomic_write_bytes(base.with_suffix(".md"), table.encode())
        print(table)
    return rows
