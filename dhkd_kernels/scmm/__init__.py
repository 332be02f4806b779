from .ops import gate_residual, scmm_modulate, two_scale_depthwise

__all__ = ["gate_residual", "scmm_modulate", "two_scale_depthwise"]
