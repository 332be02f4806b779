from .ops import scmm_modulate

__all__ = ["scmm_modulate"]
