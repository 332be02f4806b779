"""Offline distillation of PDN teachers (EfficientAD's teacher pretraining with pluggable backbones).

Modules: :mod:`.backbones` (distillation targets), :mod:`.images` (image folders and paired views),
:mod:`.distill` (training loop, checkpoints), :mod:`.sample_images` (an offline sample-image folder).
"""
