"""The DHKD model: frozen teacher PDN, student encoder, FCCM, Lnet (structural) and Gnet (logical)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data.windows import WindowPlan
from .calibration import BOTH_MAPS, normalisation_weights, normalise_maps
from .config import DHKDConfig, preset
from .fccm import FCCM
from .gnet import Gnet
from .lnet import Lnet
from .scoring import map_and_score
from .student import StudentEncoder
from .teacher import PDN, BackboneTeacher


class DHKD(nn.Module):
    """Teacher–student anomaly detector with two heterogeneous student decoders.

    Input: an ImageNet-normalised image batch (b, 3, H, W). Training (``model.train()``): ``model(x)``
    returns the 1:1:2 loss and its terms. Evaluation (``model.eval()``): ``model(x)`` returns
    ``anomaly_map`` (b, 1, H, W) — the quantile-normalised combined map at the input's resolution — and
    ``score`` (b,), its maximum (or the mean of its top ``image_score_top`` %). The teacher channel statistics
    and the map quantiles are buffers, saved with the weights; :mod:`dhkd.models.calibration` fits them and
    :mod:`dhkd.models.scoring` turns the normalised map into the map at the image size and the score.

    With ``cell_norm`` (an option of the CPU recipe, not the paper's) the normalised map is z-scored per feature
    cell with buffers ``cell_mean`` / ``cell_std`` (1, 1, h, w) fitted on the good validation maps right after
    the quantiles (registered only then, so other models' weights files are unchanged); ``map_sigma`` > 0 then
    smooths it with a Gaussian of that many feature cells, before the resize.

    With ``use_gnet=False`` (the "Lnet only" ablation) there is no Gnet: the loss is α·mean((T̂−f_L)²), the map
    is norm(map_L) alone (``map_mix`` = (1, 0)) and ``raw_maps`` returns a zero map_G, so every consumer of the
    (map_L, map_G) pair works unchanged.
    """

    def __init__(self, config: DHKDConfig | None = None):
        super().__init__()
        self.config = cfg = config or DHKDConfig()
        if not cfg.teacher_padding:
            raise ValueError("DHKD's student encoder is padded, so its teacher must be padded too "
                             "(teacher_padding=True); unpadded PDNs are for loading/distillation only")
        if cfg.teacher_backbone:
            self.teacher = BackboneTeacher(cfg.teacher_backbone, cfg.channels, self.feature_size)
        else:
            self.teacher = PDN(cfg.teacher_size, cfg.channels, cfg.teacher_padding, cfg.teacher_width_div)
        self.teacher.requires_grad_(False)
        self.encoder = StudentEncoder(cfg.encoder_widths, cfg.channels)
        self.fccm = FCCM(cfg.channels, cfg.fccm_hidden, use_mixer=cfg.use_fccm)
        self.lnet = Lnet(cfg.channels, cfg.lnet_width, cfg.lnet_hidden, use_scmm=cfg.use_scmm)
        self.gnet = Gnet(cfg.channels, cfg.gnet_bottleneck, cfg.gnet_kernel, cfg.gnet_width, cfg.gnet_head,
                         cfg.gnet_stages, cfg.use_hstm, cfg.dropout, cfg.d_state, cfg.ssm_ratio) if cfg.use_gnet else None
        self.register_buffer("teacher_mean", torch.zeros(1, cfg.channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, cfg.channels, 1, 1))
        self.register_buffer("quantiles", torch.zeros(4))  # qa_l, qb_l, qa_g, qb_g; all zero = not fitted
        if cfg.cell_norm:  # per-cell statistics of the normalised map at the training size; std 0 = not fitted
            cells = (1, 1, *self.feature_size((cfg.image_size, cfg.image_size)))
            self.register_buffer("cell_mean", torch.zeros(cells))
            self.register_buffer("cell_std", torch.zeros(cells))
        self.teacher_stats_folded = False  # True once fold_teacher_statistics() moved them into the teacher

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DHKD":
        """Build a preset ("paper", "small", "tiny"), optionally overriding config fields."""
        return cls(preset(name, **overrides))

    # ---------------------------------------------------------------- set-up
    def train(self, mode: bool = True) -> "DHKD":
        """Set train/eval mode; the teacher stays in eval mode (frozen)."""
        super().train(mode)
        self.teacher.eval()  # frozen, always
        return self

    def student_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (everything but the frozen teacher)."""
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.")]

    def set_teacher_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the teacher's per-channel output mean and std (see :func:`calibration.teacher_statistics`)."""
        if self.teacher_stats_folded:
            raise RuntimeError("the teacher statistics are folded into the teacher's last convolution")
        self.teacher_mean.copy_(mean.reshape(self.teacher_mean.shape))
        self.teacher_std.copy_(std.reshape(self.teacher_std.shape))

    @torch.no_grad()
    def fold_teacher_statistics(self) -> "DHKD":
        """Fold (conv(x) − mean)/std into the teacher's last convolution (W/std, (b − mean)/std), in place, for
        inference: the teacher then outputs T̂ directly. Returns the model. A backbone teacher has no last
        convolution (its output is pooled and resized): its statistics stay in the buffers, applied per call."""
        if not self.teacher_stats_folded and isinstance(self.teacher, PDN):
            last = self.teacher.convs[-1]
            scale = 1.0 / self.teacher_std.reshape(-1)
            last.weight.mul_(scale[:, None, None, None])
            last.bias.copy_((last.bias - self.teacher_mean.reshape(-1)) * scale)
            self.teacher_mean.zero_()
            self.teacher_std.fill_(1.0)
            self.teacher_stats_folded = True
        return self

    def set_quantiles(self, qa_l: float, qb_l: float, qa_g: float, qb_g: float) -> None:
        """Store the map quantiles (see :func:`calibration.fit_quantiles`); qa < qb for each map in use."""
        normalisation_weights((qa_l, qb_l, qa_g, qb_g), self.map_mix)  # validates them
        self.quantiles.copy_(torch.tensor([qa_l, qb_l, qa_g, qb_g], dtype=self.quantiles.dtype))
        if self.cell_norm:  # statistics of the previous normalisation no longer describe the map
            self.cell_mean.zero_()
            self.cell_std.zero_()

    def set_cell_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the per-cell mean and std (std > 0) of the normalised map (see
        :func:`calibration.fit_cell_statistics`); only for a model with ``cell_norm``."""
        if not self.cell_norm:
            raise RuntimeError("this model has no per-cell normalisation (cell_norm=False)")
        mean, std = mean.reshape(-1, *mean.shape[-2:]), std.reshape(-1, *std.shape[-2:])
        if mean.shape != std.shape or tuple(mean.shape) != (1, *self.cell_mean.shape[-2:]):
            raise ValueError(f"cell statistics must be {tuple(self.cell_mean.shape[-2:])} (the feature map at "
                             f"image size {self.image_size}), got mean {tuple(mean.shape)}, std {tuple(std.shape)}")
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all()) and bool((std > 0).all())):
            raise ValueError("cell statistics must be finite with std > 0")
        self.cell_mean.copy_(mean.reshape(self.cell_mean.shape))
        self.cell_std.copy_(std.reshape(self.cell_std.shape))

    @property
    def image_size(self) -> int:
        """The square input side the model is trained and deployed at."""
        return self.config.image_size

    @property
    def map_mix(self) -> tuple[float, float]:
        """Weights of norm(map_L) and norm(map_G) in the anomaly map: 0.5 each, or (1, 0) without Gnet."""
        return BOTH_MAPS if self.config.use_gnet else (1.0, 0.0)

    @property
    def has_quantiles(self) -> bool:
        """Whether the map quantiles are fitted (a model saved by the trainer always has them)."""
        return bool(self.quantiles.abs().sum() > 0)

    @property
    def cell_norm(self) -> bool:
        """Whether the normalised map is z-scored per feature cell (``config.cell_norm``)."""
        return self.config.cell_norm

    @property
    def input_mode(self) -> str:
        """How an image becomes the model's S×S inputs (``config.input_mode``: squash, pad or tile)."""
        return self.config.input_mode

    @property
    def image_score_top(self) -> float:
        """The image score's share of the map in % (``config.image_score_top``; 0 = the map's maximum)."""
        return float(self.config.image_score_top)

    @property
    def has_cell_statistics(self) -> bool:
        """Whether the per-cell statistics are fitted (always False without ``cell_norm``)."""
        return self.cell_norm and bool((self.cell_std > 0).all())

    def cell_statistics(self, check: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cell_mean, cell_std) of a ``cell_norm`` model, None without; ``check`` raises when not fitted."""
        if not self.cell_norm:
            return None
        if check and not self.has_cell_statistics:
            raise RuntimeError("the per-cell map statistics are not fitted (this model has cell_norm=True): fit "
                               "them with the quantiles, dhkd.models.calibration.fit_quantiles(model, "
                               "validation_dataset) (the trainer and `dhkd evaluate --model` do), or load a "
                               "model saved by the trainer")
        return self.cell_mean, self.cell_std

    def map_weights(self) -> tuple[float, float, float]:
        """(w_L, w_G, c) of the map normalisation, from the fitted quantiles."""
        if not self.has_quantiles:
            raise RuntimeError("the map quantiles are not fitted: fit them on good validation images with "
                               "dhkd.models.calibration.fit_quantiles (the trainer and `dhkd evaluate --model` "
                               "do), or load a model saved by the trainer")
        return normalisation_weights(self.quantiles, self.map_mix)

    # ---------------------------------------------------------------- shapes
    @staticmethod
    def feature_size(size: tuple[int, int]) -> tuple[int, int]:
        """Teacher/student feature map size (h, w) for an input of ``size`` (64×64 for 256×256)."""

        def side(s: int) -> int:
            a = (s + 3) // 2 + 1
            b = (a + 3) // 2 + 1
            return b - 3

        return side(size[0]), side(size[1])

    def min_input_size(self) -> int:
        """The smallest square input side this configuration accepts."""
        s = 8
        while not self._size_ok((s, s)):
            s += 1
        return s

    def _size_ok(self, size: tuple[int, int]) -> bool:
        fh, fw = self.feature_size(size)
        mh, mw = fh // 4, fw // 4
        return min(fh, fw) >= 2 and (not self.config.use_gnet or min(mh, mw) >= self.config.gnet_kernel)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error if ``x`` is not a floating-point (b, 3, H, W) batch of a usable size."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"DHKD expects an image batch (b, 3, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != 3:
            raise ValueError(f"DHKD expects 3 input channels (RGB), got {x.shape[1]}")
        if not x.is_floating_point():
            raise TypeError(f"DHKD expects a floating-point (ImageNet-normalised) image batch, got {x.dtype}")
        if not self._size_ok(tuple(x.shape[-2:])):
            m = self.min_input_size()
            raise ValueError(f"input {x.shape[-2]}×{x.shape[-1]} is too small for this model: it needs at least "
                             f"{m}×{m} (Gnet collapses the {self.config.gnet_kernel}×{self.config.gnet_kernel} "
                             f"bottleneck map)")

    # ---------------------------------------------------------------- forward
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """T̂: the frozen teacher's output normalised with the stored channel statistics."""
        with torch.no_grad():
            t = self.teacher(x)
            return t if self.teacher_stats_folded else (t - self.teacher_mean) / self.teacher_std

    def features(self, x: torch.Tensor, t_hat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """T̂ (normalised teacher; computed unless given), f_S, f_L, f_G (absent without Gnet) — all (b, C, h, w)."""
        self.check_input(x)
        if t_hat is None:
            t_hat = self.teacher_features(x)
        f_s = self.encoder(x)
        size = tuple(f_s.shape[-2:])
        f_m = self.fccm(f_s)
        f = {"t_hat": t_hat, "f_s": f_s, "f_l": self.lnet(f_m, size)}
        if self.gnet is not None:
            f["f_g"] = self.gnet(f_m, size)
        return f

    def losses(self, x: torch.Tensor, t_hat: torch.Tensor | None = None,
               hard_mining: float = 0.0) -> dict[str, torch.Tensor]:
        """L = α·mean((T̂−f_L)²) + β·mean((T̂−f_G)²) + γ·mean((f_G−f_S)²), α:β:γ = 1:1:2 (no detach).

        ``hard_mining`` = q in (0, 1) keeps only the Lnet distances at or above their q-quantile
        (EfficientAD's hard-feature loss; off in DHKD). Without Gnet the loss is α·loss_l alone (no loss_g, loss_c).
        """
        f = self.features(x, t_hat)
        dist_l = (f["t_hat"] - f["f_l"]) ** 2
        if hard_mining:
            flat = dist_l.flatten()
            k = max(1, min(flat.numel(), int(math.ceil(hard_mining * flat.numel()))))
            threshold = flat.detach().kthvalue(k).values
            loss_l = flat[flat >= threshold].mean()
        else:
            loss_l = dist_l.mean()
        a, b, c = self.config.loss_weights
        if "f_g" not in f:
            return {"loss": a * loss_l, "loss_l": loss_l}
        loss_g = ((f["t_hat"] - f["f_g"]) ** 2).mean()
        loss_c = ((f["f_g"] - f["f_s"]) ** 2).mean()
        return {"loss": a * loss_l + b * loss_g + c * loss_c, "loss_l": loss_l, "loss_g": loss_g, "loss_c": loss_c}

    def raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised maps at feature resolution: map_L = mean_c (T̂−f_L)², map_G = mean_c (f_G−f_S)² (zeros
        without Gnet, weighted 0 by the normalisation)."""
        f = self.features(x)
        map_l = ((f["t_hat"] - f["f_l"]) ** 2).mean(1, keepdim=True)
        map_g = ((f["f_g"] - f["f_s"]) ** 2).mean(1, keepdim=True) if "f_g" in f else torch.zeros_like(map_l)
        return map_l.float(), map_g.float()

    def normalized_map(self, map_l: torch.Tensor, map_g: torch.Tensor, size: tuple[int, int],
                       plan: WindowPlan | None = None) -> torch.Tensor:
        """0.5·norm(map_L) + 0.5·norm(map_G), norm(m) = 0.1·(m−q_a)/(q_b−q_a) (then the per-cell z-score and
        the smoothing when configured), bilinearly resized to ``size`` (the windows of one image stitched
        first, with ``plan``)."""
        return self.score_raw_maps(map_l, map_g, size, plan=plan)[0]

    def score_raw_maps(self, map_l: torch.Tensor, map_g: torch.Tensor, size: tuple[int, int],
                       weights: tuple[float, float, float] | None = None,
                       plan: WindowPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly map (b, 1, H, W) at ``size``, score (b,)) of the raw maps: normalised with ``weights``
        (default: from the fitted quantiles), then :func:`dhkd.models.scoring.map_and_score` with the per-cell
        statistics (``cell_norm``), ``map_sigma``, ``image_score_top`` and the window ``plan`` (the maps are
        then the windows of one image: (1, 1, H, W) and (1,)). Without ``weights`` the calibration is
        checked here; a caller passing them (the deployment detector) checked it once, so the traced graph has no
        such test."""
        checked = weights is None
        weights = weights or self.map_weights()
        return map_and_score(normalise_maps(map_l, map_g, weights), size,
                             cell_stats=self.cell_statistics(check=checked), sigma=float(self.config.map_sigma),
                             top_percent=self.image_score_top, plan=plan)

    def detect(self, x: torch.Tensor, size: tuple[int, int] | None = None,
               weights: tuple[float, float, float] | None = None,
               plan: WindowPlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly map (b, 1, H, W) at ``size`` (default: the input's), score (b,)) of an image batch, or with
        ``plan`` of the windows of one image (:mod:`dhkd.data.windows`): the inference path of the eval forward
        and of :class:`dhkd.runtime.AnomalyDetector`."""
        map_l, map_g = self.raw_maps(x)
        return self.score_raw_maps(map_l, map_g, size or tuple(x.shape[-2:]), weights, plan)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training: the loss terms of :meth:`losses`. Evaluation: anomaly map, score and the raw maps."""
        if self.training:
            return self.losses(x)
        map_l, map_g = self.raw_maps(x)
        amap, score = self.score_raw_maps(map_l, map_g, tuple(x.shape[-2:]))
        return {"anomaly_map": amap, "score": score, "map_l": map_l, "map_g": map_g}
