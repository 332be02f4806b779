"""The DHKD training loop: the paper recipe, exact resume, kill-safe checkpoints, a progress bar.

Problems surface before training starts (every image of the splits used is decode-checked, the teacher
file is read) or at the step where they happen (a NaN/Inf loss stops the run at once, naming the step).

The optional test-split evaluation is a step the caller hands in (an :class:`Evaluator`): training does not
depend on the evaluation package.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm import tqdm

from dhkd.data import build_dataset
from dhkd.data.common import check_images
from dhkd.data.windows import WindowDataset
from dhkd.denormals import flush_denormals
from dhkd.models import DHKD
from dhkd.models.config import preset
from dhkd.models.calibration import fit_quantiles, teacher_statistics
from dhkd.persistence import CheckpointError, atomic_write_bytes, atomic_write_json, save_model
from dhkd.persistence.training import has_checkpoint, load_checkpoint, save_checkpoint, training_checkpoint
from dhkd.runtime.device import pick_device
from dhkd.runtime.progress import progress

from .config import UNTRAINED_TEACHERS, TrainConfig

FAILED = "failed.json"  # written into a run folder whose training failed after its first checkpoint
NEVER = 2**62  # a scheduler step size no run reaches: the lr does not decay (again)


def sample_indices(n: int, seed: int, step: int, batch_size: int) -> list[int]:
    """Dataset indices for ``step``: a fresh seeded permutation per epoch, so any step can be recomputed."""
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(p, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[pos]))
    return out


def claim_new_path(parent: Path, name: str, create: Callable[[Path], object], what: str) -> Path:
    """The first of ``parent/name``, ``name-2``, ``name-3``, ... that ``create`` makes (it must raise
    FileExistsError when the path is taken, atomically), so launches started together never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free {what} name for {name} under {parent}")


def claim_run_dir(parent: Path, stamp: str) -> Path:
    """Create and return a new folder ``parent/stamp`` (``stamp-2``, ``stamp-3``, ... when taken)."""
    return claim_new_path(parent, stamp, Path.mkdir, "run folder")


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and what to try."""


class Evaluator(Protocol):
    """The test-split evaluation a :class:`Trainer` runs after training when ``TrainConfig.evaluate`` is set.

    Called once as ``evaluate_test(model, test_split, run_dir, device=device, quantiles=quantiles)`` with the
    trained model (eval mode, map quantiles set), the config's test split, the run folder and the fitted
    quantiles; whatever it writes goes into ``run_dir``, and the dict it returns is the summary's ``"results"``.
    ``dhkd.commands.train.evaluator_for(config)`` is the package's evaluator bound to a config's options.
    """

    def __call__(self, model: DHKD, test_split, run_dir: Path, *, device: torch.device, quantiles: dict) -> dict:
        ...


class Trainer:
    """Train one model on one category. ``run()`` returns a summary dict (and writes it to the run dir).

    Without ``config.run_dir`` the run gets a new folder ``output/<dataset>/<category>/<timestamp>``
    (claimed atomically when ``run()`` starts); ``run_dir`` is then known. A config with ``evaluate`` set
    needs ``evaluate_test`` (see :class:`Evaluator`); without ``evaluate`` it is not called.

    ``teacher_stats`` = (mean, std), each with one value per teacher channel, skips the pass over the training
    split that a new run makes for the teacher's channel statistics; give only statistics of this teacher on
    this training split at this image size (e.g. another run's ``model.teacher_mean`` / ``teacher_std``).
    """

    def __init__(self, config: TrainConfig, timestamp: str | None = None, evaluate_test: Evaluator | None = None,
                 teacher_stats: tuple[torch.Tensor, torch.Tensor] | None = None):
        flush_denormals()  # training slows tenfold on subnormal floats (dhkd.denormals)
        self.cfg = config.validate()
        if teacher_stats is not None:
            mean, std = (torch.as_tensor(t, dtype=torch.float32).reshape(-1) for t in teacher_stats)
            if mean.shape != std.shape or not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())
                                               and bool((std > 0).all())):
                raise ValueError("teacher_stats must be (mean, std) of one shape, finite, with std > 0")
            teacher_stats = (mean, std)
        self.teacher_stats = teacher_stats
        if config.evaluate and evaluate_test is None:
            raise ValueError("the training config asks for a test-split evaluation (evaluate: true) but the "
                             "Trainer was given no evaluator: pass evaluate_test= (e.g. "
                             "dhkd.commands.train.evaluator_for(config)) or set evaluate: false")
        self.evaluate_test = evaluate_test
        self.device = pick_device(config.device)
        self.stamp = timestamp or datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(config.run_dir) if config.run_dir else None

    # ------------------------------------------------------------------ set-up
    def build_model(self) -> DHKD:
        """The seeded model of the config's preset with its teacher weights loaded (or its backbone teacher built)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        backbone = cfg.teacher_backbone
        model = DHKD.from_preset(cfg.preset, **{"image_size": cfg.image_size, **cfg.model_overrides,
                                                "teacher_backbone": backbone})  # "" = a PDN teacher
        model.check_input(torch.empty(1, 3, cfg.image_size, cfg.image_size, device="meta"))  # size fits the model
        if cfg.teacher not in UNTRAINED_TEACHERS and not backbone:
            from dhkd.persistence import load_teacher

            teacher = load_teacher(cfg.teacher, size=model.config.teacher_size, padding=True)
            model.teacher.load_state_dict(teacher.state_dict())
        return model.to(self.device)

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def check_data(self):
        """Build the splits this run uses and decode-check every image; returns the training split.

        All unreadable files are listed in one :class:`dhkd.data.DatasetError` before any training.
        """
        cfg = self.cfg
        train_set = self._split("train")
        splits = [train_set] + [self._split(split)
                                for split in (("validation", "test") if cfg.evaluate else ("validation",))]
        check_images(sorted({s.path for d in splits for s in d.samples}))
        good = sum(s.label == 0 for s in splits[1].samples)
        if cfg.model_overrides.get("cell_norm") and good < 2:  # fitted after training: refuse before it
            raise ValueError(f"cell_norm needs at least 2 good validation images for its per-cell map statistics, "
                             f"the validation split of {cfg.dataset}/{cfg.category} has {good}")
        # images cut into several windows (input_mode pad / tile) train on every window as its own image
        return train_set if train_set.input_mode == "squash" else WindowDataset(train_set)

    def _split(self, split: str):
        """One split of the run's dataset, its images cut into inputs as the model's ``input_mode`` says."""
        cfg = self.cfg
        mode = cfg.model_overrides.get("input_mode", preset(cfg.preset).input_mode)
        return build_dataset(cfg.dataset, cfg.root, cfg.category, split, cfg.image_size, cfg.seed, mode,
                             **cfg.dataset_options)

    def run(self) -> dict:
        """Train (continuing from the run folder's checkpoint if there is one), evaluate, save the model.

        If the run fails before its first checkpoint, the folder it created is removed; after that it is
        kept (resumable) with a ``failed.json`` naming the error.
        """
        train_set = self.check_data()
        model = self.build_model()  # reads the teacher file: a bad one fails before any folder is made
        if self.teacher_stats is not None and self.teacher_stats[0].numel() != model.teacher_mean.numel():
            raise ValueError(f"teacher_stats have {self.teacher_stats[0].numel()} channels, the teacher outputs "
                             f"{model.teacher_mean.numel()}")
        created = self.run_dir is None or not self.run_dir.exists()
        if self.run_dir is None:
            self.run_dir = claim_run_dir(Path(self.cfg.output) / self.cfg.dataset / self.cfg.category, self.stamp)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            summary = self._run(train_set, model)
        except BaseException as exc:
            if created and not has_checkpoint(self.run_dir):
                shutil.rmtree(self.run_dir, ignore_errors=True)
            elif self.run_dir.is_dir() and not isinstance(exc, CheckpointError):  # (a refused resume ran nothing)
                atomic_write_json(self.run_dir / FAILED, {"error": f"{type(exc).__name__}: {exc}",
                                                          "resume": f"dhkd train --resume {self.run_dir}"})
            raise
        (self.run_dir / FAILED).unlink(missing_ok=True)
        return summary

    def _decay_lr_now(self, optimizer, scheduler, step: int) -> None:
        """The time-triggered decay (``lr_decay_time_fraction``): a slow machine that would reach the time
        limit before ``lr_decay_step`` still trains its last share at the decayed rate. It replaces the step
        schedule: the scheduler's step size becomes unreachable, and both live in the checkpoint, so a resumed
        run neither decays again nor loses the decay."""
        for group in optimizer.param_groups:
            group["lr"] *= self.cfg.lr_gamma
        scheduler.step_size = NEVER
        print(f"lr ×{self.cfg.lr_gamma} at step {step}: {self.cfg.lr_decay_time_fraction:.0%} of the "
              f"{self.cfg.time_limit_minutes} min time limit passed before step {self.cfg.lr_decay_step}")

    def _run(self, train_set, model: DHKD) -> dict:
        cfg, device = self.cfg, self.device
        atomic_write_bytes(self.run_dir / "config.yaml", cfg.dump_yaml().encode())
        optimizer = torch.optim.Adam(model.student_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(  # lr_decay_step <= 0: never decay
            optimizer, cfg.lr_decay_step if cfg.lr_decay_step > 0 else NEVER, cfg.lr_gamma)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp
                                      and not torch.cuda.is_bf16_supported())
        # images are decoded lazily, or kept in memory together with the teacher outputs when they fit
        cache = cfg.cache_teacher and self._cache_fits(model, len(train_set))
        images = _ImageSource(train_set, cache=cache)
        start = 0
        if has_checkpoint(self.run_dir):
            start = load_checkpoint(self.run_dir, model, optimizer, scheduler, cfg.to_dict())
            print(f"resuming {self.run_dir} at step {start}")
        else:
            training_checkpoint(self.run_dir).tidy(keep=None)  # what a kill during a first save left
        t0 = time.time()
        t_cache = images.teacher_outputs(model, device) if cache else None  # one teacher pass, kept
        if t_cache is not None:
            outputs = lambda: (t_cache[i:i + 1] for i in range(len(t_cache)))  # noqa: E731
        else:
            outputs = lambda: images.teacher_outputs_lazily(model, device)  # noqa: E731
        if start == 0:  # a resumed run has them in its checkpoint
            if self.teacher_stats is not None:
                model.set_teacher_stats(*(t.to(device) for t in self.teacher_stats))
            else:
                model.set_teacher_stats(*teacher_statistics(outputs))
                print(f"teacher statistics over {len(train_set)} training images in {time.time() - t0:.1f} s")
        if t_cache is not None:  # normalise the kept outputs in place: the cache of T̂
            t_cache.sub_(model.teacher_mean).div_(model.teacher_std)
        model.train()
        penalty = _PenaltyImages(cfg.penalty_dir, cfg.image_size, cfg.seed) if cfg.penalty_dir else None
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", dynamic_ncols=True)
        t0, last, done = time.time(), {}, cfg.steps
        for step in bar:
            elapsed = time.time() - t0
            if cfg.time_limit_minutes > 0 and elapsed > 60 * cfg.time_limit_minutes:
                done = step
                print(f"time limit of {cfg.time_limit_minutes} min reached after {step} steps")
                break
            if (cfg.lr_decay_time_fraction > 0 and optimizer.param_groups[0]["lr"] == cfg.lr
                    and elapsed > cfg.lr_decay_time_fraction * 60 * cfg.time_limit_minutes):
                self._decay_lr_now(optimizer, scheduler, step)
            idx = sample_indices(len(train_set), cfg.seed, step, cfg.batch_size)
            x = images.get(idx).to(device)
            t_hat = t_cache[idx] if t_cache is not None else None
            with self._autocast():
                out = model.losses(x, t_hat=t_hat, hard_mining=cfg.hard_mining)
                loss = out["loss"]
                if penalty is not None:
                    out["loss_penalty"] = (model.features(penalty.get(step).to(device))["f_l"] ** 2).mean()
                    loss = loss + out["loss_penalty"]
            self._check_finite(step + 1, loss, out)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                last = {k: float(v.detach()) for k, v in out.items()}
                bar.set_postfix({k.replace("loss_", ""): f"{v:.4f}" for k, v in last.items()})
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(self.run_dir, step + 1, model, optimizer, scheduler, cfg.to_dict())
        bar.close()
        train_time = time.time() - t0
        if done > start:  # (a resumed run that had nothing left to do keeps its checkpoint as it is)
            save_checkpoint(self.run_dir, done, model, optimizer, scheduler, cfg.to_dict())
        summary = {"run_dir": str(self.run_dir), "steps": done, "planned_steps": cfg.steps,
                   "final_lr": optimizer.param_groups[0]["lr"],
                   "train_seconds": round(train_time, 1),
                   "seconds_per_step": round(train_time / max(1, done - start), 4), "final_losses": last,
                   "device": str(device)}
        # the map normalisation is fitted on held-out good images whether or not the test split is evaluated,
        # so every saved model is deployable
        model.eval()
        validation = self._split("validation")
        summary["quantiles"] = fit_quantiles(model, validation, device=device, seed=cfg.seed, progress=progress)
        if cfg.evaluate:  # the optional test-split evaluation, a step the caller handed in
            test = self._split("test")
            summary["results"] = self.evaluate_test(model, test, self.run_dir, device=device,
                                                    quantiles=summary["quantiles"])
        save_model(model, self.run_dir / "model.safetensors",
                   extra={"dataset": cfg.dataset, "category": cfg.category, "steps": done})
        atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def _cache_fits(self, model: DHKD, n_images: int) -> bool:
        """Whether the decoded training images and their teacher outputs (fp32) fit in ``cache_limit_mb``;
        if not, say so: the teacher then runs on each step's images instead."""
        h, w = model.feature_size((self.cfg.image_size, self.cfg.image_size))
        mb = n_images * (3 * self.cfg.image_size ** 2 + model.config.channels * h * w) * 4 / 2 ** 20
        if mb <= self.cfg.cache_limit_mb:
            return True
        print(f"not caching the teacher outputs: {n_images} training images need {mb:.0f} MB, more than "
              f"cache_limit_mb = {self.cfg.cache_limit_mb}; the teacher runs on every step's images instead")
        return False

    def _check_finite(self, step: int, loss: torch.Tensor, parts: dict) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            terms = ", ".join(f"{k} = {float(v.detach()):.4g}" for k, v in parts.items())
            last = training_checkpoint(self.run_dir)
            where = f"; the last good state is the checkpoint in {self.run_dir}" if last.exists() else ""
            raise TrainingDiverged(f"training loss is {value} at step {step} ({terms}): the run diverged; try a "
                                   f"lower learning rate (--set lr=...), amp=false on GPU, or check the teacher "
                                   f"file and the training images{where}")


class _ImageSource:
    """Training images by index; optionally all decoded once and kept (with the teacher outputs)."""

    def __init__(self, dataset, cache: bool):
        self.dataset = dataset
        self.cached = torch.stack([dataset[i]["image"] for i in range(len(dataset))]) if cache else None

    def get(self, idx: list[int]) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[idx]
        return torch.stack([self.dataset[i]["image"] for i in idx])

    def batches(self):
        for i in range(len(self.dataset)):
            yield self.get([i])

    @torch.no_grad()
    def teacher_outputs(self, model: DHKD, device: torch.device) -> torch.Tensor:
        """The raw teacher outputs of every image, written into one preallocated (n, C, h, w) tensor."""
        out = None
        for i, t in enumerate(self.teacher_outputs_lazily(model, device)):
            if out is None:
                out = torch.empty((len(self.dataset), *t.shape[1:]), dtype=t.dtype, device=t.device)
            out[i:i + 1] = t
        return out

    @torch.no_grad()
    def teacher_outputs_lazily(self, model: DHKD, device: torch.device):
        for x in tqdm(self.batches(), total=len(self.dataset), desc="teacher", leave=False):
            yield model.teacher(x.to(device))


class _PenaltyImages:
    """Images of an ImageNet-like folder for EfficientAD's penalty, in a seeded order."""

    def __init__(self, directory: str, image_size: int, seed: int):
        from dhkd.data.common import list_images, preprocess, read_rgb

        self.paths = list_images(Path(directory))
        if not self.paths:
            raise ValueError(f"penalty_dir {directory} contains no images")
        self._read = lambda p: preprocess(read_rgb(p), image_size)
        self.seed = seed

    def get(self, step: int) -> torch.Tensor:
        i = sample_indices(len(self.paths), self.seed + 1, step, 1)[0]
        return self._read(self.paths[i])[None]
