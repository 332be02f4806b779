from .ops import fccm_bias_gelu, fccm_forward, fccm_pool_relu

__all__ = ["fccm_bias_gelu", "fccm_forward", "fccm_pool_relu"]
