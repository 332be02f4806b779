"""DHKD model components."""
from .config import PRESETS, DHKDConfig, preset
from .dhkd import DHKD
from .teacher import PDN

__all__ = ["DHKD", "DHKDConfig", "PDN", "PRESETS", "preset"]
