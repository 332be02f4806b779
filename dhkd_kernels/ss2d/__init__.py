from .ops import ss2d_scan

__all__ = ["ss2d_scan"]
