"""DHKD: dual-heterogeneous knowledge distillation with Mamba for industrial anomaly detection."""
__version__ = "0.1.0"
