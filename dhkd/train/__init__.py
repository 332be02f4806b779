"""Training: config and loop (checkpoints are written by :mod:`dhkd.persistence.training`)."""
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
