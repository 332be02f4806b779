"""The selective scan (Mamba S6) op: :func:`selective_scan`, with reference, C++ CPU, CUDA and Triton backends."""
from .ops import selective_scan

__all__ = ["selective_scan"]
