"""Named training recipes: whole sets of :class:`~dhkd.train.TrainConfig` settings that were measured together.

``dhkd train --recipe cpu --dataset ... --root ... --category ...`` starts from the recipe instead of the
defaults (which are the paper's recipe); flags and ``--set`` still override single fields. docs/recipe.md
states what each setting rests on.
"""
from __future__ import annotations

from .config import TrainConfig

RECIPES: dict[str, dict] = {
    # One category in at most an hour on a 2-core CPU: the backbone itself as the teacher (no distillation),
    # the `small` preset (the paper's architecture, HSTM included), 3,000 steps at lr 5e-4 (×0.1 after 2,400,
    # or once 80 % of the hour has passed on a slower machine), the map z-scored per feature cell with good
    # validation maps and smoothed by one cell, the image score the mean of the map's top 1 %.
    "cpu": {"preset": "small", "teacher": "backbone:efficientnet-lite0", "steps": 3000, "lr": 5e-4,
            "lr_decay_step": 2400, "time_limit_minutes": 60.0, "lr_decay_time_fraction": 0.8,
            "checkpoint_every": 250,
            "model_overrides": {"cell_norm": True, "map_sigma": 1.0, "image_score_top": 1.0}},
}


def recipe_config(name: str) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` (dataset, root and category still to be set)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {sorted(RECIPES)}")
    settings = RECIPES[name]
    return TrainConfig.from_dict({**settings, "model_overrides": dict(settings["model_overrides"])})
