from .ops import selective_scan, ss2d_scan

__all__ = ["selective_scan", "ss2d_scan"]
