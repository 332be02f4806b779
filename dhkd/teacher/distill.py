"""Distilling a PDN teacher from a pretrained backbone (EfficientAD's teacher pretraining, offline-able).

The PDN (``padding=True``) sees an ImageNet-normalised image of size S; the target is the backbone's
projected 384-channel feature map of the same image at ``backbone.input_scale``·S, standardised per
channel with a mean and std estimated once on ``stat_images`` augmented samples. Loss: MSE. Optimiser:
Adam (lr 1e-4, weight decay 1e-5 by default, as in EfficientAD's pretraining).

Checkpoints (every ``checkpoint_every`` steps and at the end) go to a folder written by
:mod:`dhkd.persistence.distill`: a kill at any moment leaves the previous or the new checkpoint. Resuming
restores everything, so a resumed run produces the same weights as an uninterrupted one. A loss that
turns NaN or infinite stops the run at once, naming the step.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.common import IMAGENET_MEAN, IMAGENET_STD
from ..models.teacher import PDN
from ..persistence.distill import distill_checkpoint, load_distill_checkpoint, save_distill_checkpoint
from ..persistence.teacher import save_teacher
from .images import PairedViews, find_images

_IMAGENET_MEAN = torch.as_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_IMAGENET_STD = torch.as_tensor(IMAGENET_STD).view(1, 3, 1, 1)
_RECENT = 100  # losses averaged for the reported final loss


@dataclass
class DistillConfig:
    """Hyper-parameters of one distillation run (all but ``steps`` must match when resuming)."""

    size: str = "small"
    steps: int = 60000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-5
    image_size: int = 256
    crop_scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False
    grayscale_p: float = 0.1
    stat_images: int = 1000
    seed: int = 0

    def __post_init__(self):
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if self.size not in ("small", "medium"):
            raise ValueError(f"size must be 'small' or 'medium', got {self.size!r}")
        for name in ("steps", "batch_size", "stat_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


@dataclass
class DistillResult:
    """What a distillation run produced: the weights file, steps, losses and wall time."""
    output: Path
    steps: int
    final_loss: float  # mean loss of the last (up to) 100 steps
    history: list[float]  # per-step losses of this call (not of earlier, resumed-from runs)
    wall_s: float  # training wall time over all sessions of the run


def initial_pdn(size: str, seed: int) -> PDN:
    """The PDN a run with this seed starts from (initialised under its own seed, global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PDN(size=size, padding=True)


def pdn_input(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a [0, 1] batch, as the PDN expects."""
    return (images - _IMAGENET_MEAN.to(images.device)) / _IMAGENET_STD.to(images.device)


@torch.no_grad()
def estimate_target_stats(backbone: nn.Module, views: PairedViews, n_images: int, batch_size: int,
                          gen: torch.Generator, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the backbone target over ``n_images`` random samples."""
    total, sq, count = None, None, 0
    for start in range(0, n_images, batch_size):
        big, _ = views.batch(min(batch_size, n_images - start), gen)
        t = backbone(big.to(device)).double()
        s, s2 = t.sum(dim=(0, 2, 3)), (t * t).sum(dim=(0, 2, 3))
        total, sq = (s, s2) if total is None else (total + s, sq + s2)
        count += t.shape[0] * t.shape[2] * t.shape[3]
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float().cpu(), std.float().cpu()


def target_loss(pdn: nn.Module, backbone: nn.Module, big: torch.Tensor, small: torch.Tensor,
                mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """MSE between the PDN's output on ``small`` and the standardised backbone target of ``big``."""
    with torch.no_grad():
        target = (backbone(big) - mean.view(1, -1, 1, 1).to(big.device)) / std.view(1, -1, 1, 1).to(big.device)
    pred = pdn(pdn_input(small))
    if pred.shape != target.shape:
        raise ValueError(f"PDN output {tuple(pred.shape)} and backbone target {tuple(target.shape)} differ; "
                         f"the backbone must give one {pred.shape[1]}-vector per PDN output cell")
    return F.mse_loss(pred, target)


def default_checkpoint_dir(output: Path) -> Path:
    """Where a distillation writing ``output`` keeps its checkpoints (``<name>.ckpt`` beside it)."""
    return output.with_name(output.name.removesuffix(".safetensors") + ".ckpt")


def distill(images_dir, output, config: DistillConfig, backbone: nn.Module, *, checkpoint_dir=None,
            checkpoint_every: int = 500, resume: bool = False, device="cpu", progress: bool = True) -> DistillResult:
    """Distil a PDN-``config.size`` from ``backbone`` on the images under ``images_dir``.

    Writes the teacher to ``output`` (safetensors with metadata; loadable with ``load_teacher``) and
    checkpoints to ``checkpoint_dir`` (default: ``<output stem>.ckpt`` beside it). With ``resume`` the
    run continues from the checkpoint there; without it an existing checkpoint is an error.
    """
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"output {output}: the name must end in .safetensors")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir(output)
    paths = find_images(images_dir)
    views = PairedViews(paths, config.image_size, config.image_size * backbone.input_scale,
                        config.crop_scale, config.hflip, config.grayscale_p)
    backbone = backbone.to(device).eval().requires_grad_(False)
    pdn = initial_pdn(config.size, config.seed).to(device).train()
    opt = torch.optim.Adam(pdn.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    run_config = {k: v for k, v in dataclasses.asdict(config).items() if k != "steps"}
    run_config.update(backbone=backbone.name, crop_scale=list(config.crop_scale))
    files = distill_checkpoint(folder)
    has_checkpoint = files.exists()
    if has_checkpoint and not resume:
        raise FileExistsError(f"checkpoint {files.state_path} exists: resume it or remove {folder}")
    if resume and has_checkpoint:
        doc, mean, std = load_distill_checkpoint(folder, pdn, opt, gen)
        if doc["config"] != run_config:
            diff = {k: (doc["config"].get(k), v) for k, v in run_config.items() if doc["config"].get(k) != v}
            raise ValueError(f"checkpoint {folder}: its configuration differs from this run's "
                             f"(saved, now): {diff}")
        step, recent, wall = doc["step"], doc["recent_losses"], doc["wall_s"]
    else:
        mean, std = estimate_target_stats(backbone, views, config.stat_images, config.batch_size, gen, device)
        step, recent, wall = 0, [], 0.0

    def checkpoint(step_now: int) -> None:
        state = {"config": run_config, "recent_losses": recent[-_RECENT:], "wall_s": wall + time.perf_counter() - t0,
                 "images_dir": str(images_dir), "images": len(paths)}
        save_distill_checkpoint(folder, step_now, pdn, opt, mean, std, gen, state)

    history: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, unit="step",
               desc=f"distil PDN-{config.size[0].upper()} from {backbone.name}", dynamic_ncols=True)
    while step < config.steps:
        big, small = views.batch(config.batch_size, gen)
        loss = target_loss(pdn, backbone, big.to(device), small.to(device), mean, std)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"distillation loss is {value} at step {step + 1}: the run diverged; "
                                     f"lower --lr, or resume from the last checkpoint in {folder}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        history.append(value)
        recent = (recent + [value])[-_RECENT:]
        bar.update(1)
        bar.set_postfix(loss=f"{sum(recent[-10:]) / len(recent[-10:]):.4f}", refresh=False)
        if step % checkpoint_every == 0 or step == config.steps:
            checkpoint(step)
    bar.close()
    wall += time.perf_counter() - t0
    final_loss = sum(recent) / len(recent) if recent else float("nan")
    metadata = {"backbone": backbone.name, "size": config.size, "steps": step, "images": len(paths),
                "images_dir": str(images_dir), "padding": True,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "image_size": config.image_size, "batch_size": config.batch_size, "lr": config.lr,
                "weight_decay": config.weight_decay, "crop_scale": list(config.crop_scale),
                "hflip": config.hflip, "grayscale_p": config.grayscale_p, "stat_images": config.stat_images,
                "seed": config.seed, "final_loss": final_loss}
    save_teacher(pdn.cpu().eval(), output, metadata)
    return DistillResult(output=output, steps=step, final_loss=final_loss, history=history, wall_s=wall)
