"""Baselines scored on the same data pipeline and metrics as DHKD: a training-free kNN scorer and EfficientAD."""
from .knn import KNNConfig, KNNScorer

__all__ = ["KNNConfig", "KNNScorer"]
