"""Model configuration (a dataclass) and the named presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..data.windows import check_input_mode
from .scoring import check_image_score_top


@dataclass(frozen=True)
class DHKDConfig:
    """Every width and switch of the DHKD model. Defaults are the ``paper`` preset (the shapes of docs/method.md)."""

    image_size: int = 256                    # square input side used in training and inference
    input_mode: str = "squash"               # how an image becomes S×S inputs: squash, pad or tile (dhkd.data.windows)
    channels: int = 384                      # feature channels of teacher and student outputs
    teacher_size: str = "medium"             # PDN-M ("medium") or PDN-S ("small")
    teacher_padding: bool = True             # DHKD's teacher is padded (64×64 maps at 256²)
    teacher_width_div: int = 1               # 1 = EfficientAD's PDN; >1 only for test-sized models
    teacher_backbone: str = ""               # "" = a PDN teacher; a backbone name = its own features (BackboneTeacher)
    encoder_widths: tuple[int, int, int] = (128, 256, 512)   # student encoder hidden widths
    use_fccm: bool = True                    # ablation: without it the bottleneck has no channel mixer
    fccm_hidden: int = 768                   # FCCM channel-mixer hidden width
    lnet_width: int = 384                    # Lnet 3×3 conv widths
    lnet_hidden: int = 768                   # Lnet channel-mixer hidden width
    use_scmm: bool = True                    # ablation: without it f_L is the channel mixer's output
    gnet_bottleneck: int = 64                # channels of the collapsed global vector
    gnet_kernel: int = 16                    # the collapse conv's kernel (16×16 f_M -> 1×1 at 256²)
    gnet_width: int = 128                    # HSTM channels
    gnet_head: tuple[int, int] = (256, 512)  # widths of the convs after the last HSTM
    gnet_stages: tuple[int, ...] = (16, 8, 2, 1)  # HSTM stage sizes as divisors of the feature map size
    use_hstm: bool = True                    # ablation: without it each stage is a plain 3×3 conv + ReLU
    use_gnet: bool = True                    # ablation "Lnet only": no Gnet, loss α·(T̂−f_L)², map norm(map_L)
    dropout: float = 0.2
    d_state: int = 16                        # SS2D state size N
    ssm_ratio: float = 2.0                   # SS2D d_inner / d_model
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)  # α (T̂,f_L) : β (T̂,f_G) : γ (f_G,f_S)
    # Scoring options of the CPU recipe (docs/recipe.md), not the paper's; the defaults leave the paper's map as is.
    cell_norm: bool = False                  # z-score each map cell with statistics of the good validation maps
    map_sigma: float = 0.0                   # Gaussian sigma in feature cells, applied before the resize (0 = off)
    image_score_top: float = 0.0             # image score = mean of the map's top P % of values (0 = its maximum)

    def __post_init__(self):
        if not isinstance(self.cell_norm, bool):
            raise ValueError(f"cell_norm must be true or false, got {self.cell_norm!r}")
        if not (isinstance(self.map_sigma, (int, float)) and 0.0 <= float(self.map_sigma) < float("inf")):
            raise ValueError(f"map_sigma must be a finite number >= 0 (feature cells), got {self.map_sigma!r}")
        check_image_score_top(self.image_score_top)
        check_input_mode(self.input_mode)

    def to_dict(self) -> dict:
        """The config as a plain dict (the inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DHKDConfig":
        """A config from a dict; unknown keys are an error, lists become tuples."""
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, DHKDConfig] = {
    # The shapes of docs/method.md: teacher 8.03 M, student ≈ 27.1 M parameters.
    "paper": DHKDConfig(),
    # PDN-S teacher and a narrower student: trainable on a 2-core CPU.
    "small": DHKDConfig(teacher_size="small", encoder_widths=(64, 128, 256), fccm_hidden=384,
                        lnet_width=128, lnet_hidden=256, gnet_bottleneck=32, gnet_width=64,
                        gnet_head=(128, 256), d_state=8),
    # Test-sized: thin networks, still every module; works from 64×64 inputs.
    "tiny": DHKDConfig(image_size=64, channels=32, teacher_size="small", teacher_width_div=8, encoder_widths=(16, 32, 32),
                       fccm_hidden=32, lnet_width=32, lnet_hidden=32, gnet_bottleneck=16, gnet_kernel=4,
                       gnet_width=16, gnet_head=(32, 32), d_state=4),
}


def preset(name: str, **overrides) -> DHKDConfig:
    """The named preset (``paper``, ``small``, ``tiny``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


__all__ = ["DHKDConfig", "PRESETS", "preset"]
