"""DHKD model components."""
from .config import PRESETS, DHKDConfig, preset
from .dhkd import DHKD
from .teacher import PDN
from dhkd.persistence.teacher import load_teacher, save_teacher

__all__ = ["DHKD", "DHKDConfig", "PDN", "PRESETS", "load_teacher", "preset", "save_teacher"]
