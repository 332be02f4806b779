"""Training configuration: a dataclass with the paper recipe as defaults, YAML files and key=value overrides."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

# ``teacher`` values that ask for the randomly initialised (untrained) teacher instead of a weights file.
UNTRAINED_TEACHERS = ("random", "untrained")
# ``teacher`` = BACKBONE_TEACHER_PREFIX + a backbone name: that pretrained backbone's own features are the teacher
# (DHKDConfig.teacher_backbone; no teacher file, no distillation).
BACKBONE_TEACHER_PREFIX = "backbone:"
NO_TEACHER_HELP = ("training needs a teacher: pass --teacher FILE with EfficientAD's teacher_medium.pth / "
                   "teacher_small.pth, an anomalib file or one made by `dhkd distill-teacher` (how to get one: "
                   "docs/teacher.md), --teacher backbone:efficientnet-lite0 (the backbone's own features, no "
                   "file), or --teacher random to distil against an untrained teacher (for tests and "
                   "demos only: its maps are far worse)")


def backbone_name(teacher: str) -> str:
    """The backbone named by a teacher setting ``"backbone:NAME"`` (checked against the known backbones), or ""
    for a teacher file or an untrained PDN."""
    if not teacher.startswith(BACKBONE_TEACHER_PREFIX):
        return ""
    name = teacher[len(BACKBONE_TEACHER_PREFIX):]
    from dhkd.teacher.backbones import BACKBONES

    if name not in BACKBONES:
        raise ValueError(f"teacher {teacher!r}: unknown backbone {name!r}; choose one of "
                         f"{[BACKBONE_TEACHER_PREFIX + n for n in sorted(BACKBONES)]}")
    return name


def check_lr_decay_time_fraction(fraction: float, time_limit_minutes: float) -> None:
    """Raise unless ``fraction`` (the share of the time limit after which the lr decays; 0 = off) is in [0, 1)
    and, when set, comes with a time limit: the check of every trainer with a time-triggered decay."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"lr_decay_time_fraction is a share of the time limit in [0, 1), got {fraction}")
    if fraction and time_limit_minutes <= 0:
        raise ValueError("lr_decay_time_fraction needs a time limit (time_limit_minutes > 0)")


@dataclass
class TrainConfig:
    """Every setting of a training run (data, model, optimisation, checkpoints, evaluation); saved as config.yaml."""
    # data
    dataset: str = "mvtec_ad"
    root: str = ""
    category: str = ""
    dataset_options: dict = field(default_factory=dict)   # e.g. folder dirs or synthetic generator settings
    image_size: int = 256
    seed: int = 0                      # model init, data order, dropout and the validation hold-out
    num_workers: int = 0
    # model
    preset: str = "paper"
    model_overrides: dict = field(default_factory=dict)   # DHKDConfig fields, e.g. {"use_hstm": false}
    teacher: str = ""                  # teacher weights (EfficientAD .pth or distilled .safetensors), "random",
    #                                    or "backbone:efficientnet-lite0" (the backbone's own features, no file)
    # optimisation (DHKD paper: batch 1, Adam 1e-4, wd 1e-5, 100k steps, lr ×0.1 after 76k)
    steps: int = 100_000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-5
    lr_decay_step: int = 76_000        # <= 0: no decay
    lr_gamma: float = 0.1
    hard_mining: float = 0.0           # EfficientAD's 0.999-quantile hard-feature loss on Lnet; 0 = off
    penalty_dir: str = ""              # ImageNet-like folder for EfficientAD's penalty on f_L; "" = off
    cache_teacher: bool = True         # keep normalised teacher outputs of the train images in memory ...
    cache_limit_mb: int = 4096         # ... while they and the decoded images fit in this many MB (else per step)
    # bookkeeping
    output: str = "runs"               # runs/<dataset>/<category>/<timestamp>/
    run_dir: str = ""                  # explicit run directory (overrides output/...)
    checkpoint_every: int = 1000
    time_limit_minutes: float = 0.0    # > 0: stop training after this wall time (checkpoint kept; --resume goes on)
    lr_decay_time_fraction: float = 0.0  # > 0 (with time_limit_minutes): if this share of the time limit passes
    #                                      before the lr has decayed, decay it once then, in place of lr_decay_step
    log_every: int = 10
    device: str = "auto"               # auto: cuda if available else cpu
    amp: bool = True                   # bf16/fp16 autocast on GPU (ignored on CPU)
    evaluate: bool = True              # fit quantiles on validation good images and evaluate the test split
    overlays: bool = False             # with evaluate: heat-map overlay PNGs of the test images
    export_maps: bool = False          # with evaluate: float TIFF maps in the official evaluation layout

    def validate(self) -> "TrainConfig":
        """Raise a clear error for an inconsistent setting; returns the config."""
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not self.root:
            raise ValueError("set the dataset root (--root)")
        if not self.category:
            raise ValueError("set the category (--category)")
        if not self.teacher:
            raise ValueError(NO_TEACHER_HELP)
        _ = self.teacher_backbone  # an unknown backbone name raises here, before any work
        if "teacher_backbone" in self.model_overrides:
            raise ValueError("choose a backbone teacher with teacher=backbone:NAME, not with "
                             "model_overrides.teacher_backbone")
        if self.hard_mining and not 0.0 < self.hard_mining < 1.0:
            raise ValueError(f"hard_mining is a quantile in (0, 1) or 0 (off), got {self.hard_mining}")
        check_lr_decay_time_fraction(self.lr_decay_time_fraction, self.time_limit_minutes)
        return self

    @property
    def teacher_backbone(self) -> str:
        """The backbone named by ``teacher = "backbone:NAME"``, or "" for a teacher file or an untrained PDN."""
        return backbone_name(self.teacher)

    def to_dict(self) -> dict:
        """The config as a plain dict (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """A config from a YAML mapping file."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not a readable YAML training config ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
        return cls.from_dict(data)

    def override(self, assignments: list[str]) -> "TrainConfig":
        """Apply ``key=value`` strings (values parsed as YAML, e.g. ``steps=500``, ``model_overrides={d_state: 4}``)."""
        known = {f.name: f for f in fields(self)}
        changes = {}
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            key = key.strip().replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown training config key {key!r}; known: {sorted(known)}")
            changes[key] = _coerce(key, yaml.safe_load(value) if value.strip() else "", type(getattr(self, key)))
        return dataclasses.replace(self, **changes)

    def dump_yaml(self) -> str:
        """The config as YAML text (what config.yaml holds)."""
        return yaml.safe_dump(json.loads(json.dumps(self.to_dict())), sort_keys=False)


def _coerce(key: str, value, kind: type):
    """YAML reads ``3e-4`` as a string and ``1`` as an int: convert to the field's type, or fail clearly."""
    if isinstance(value, kind):
        return value
    try:
        if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if kind is str:
            return str(value)
    except ValueError:
        pass
    raise ValueError(f"{key} must be a {kind.__name__}, got {value!r}")
