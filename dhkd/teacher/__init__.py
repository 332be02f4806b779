"""Offline distillation of PDN teachers (EfficientAD's teacher pretraining with pluggable backbones)."""
from .backbones import BACKBONES, BackboneUnavailable, build_backbone, project_patches
from .distill import DistillConfig, DistillResult, distill
from .images import PairedViews, find_images

__all__ = ["BACKBONES", "BackboneUnavailable", "DistillConfig", "DistillResult", "PairedViews", "build_backbone",
           "distill", "find_images", "project_patches"]
