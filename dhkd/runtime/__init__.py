"""Deployment runtime: the detector module, its execution modes, export, and the one device picker.

``predict``, ``evaluate``, ``export``, ``train`` and the benchmark take their device from
:func:`pick_device` and run detectors through :class:`AnomalyDetector` and :class:`Runner`.
"""
from .detector import AnomalyDetector
from .device import pick_device
from .export import as_detector, export_onnx, export_program, require_onnx_packages
from .modes import MODES, Mode, Runner, unsupported_reason

__all__ = ["AnomalyDetector", "MODES", "Mode", "Runner", "as_detector", "export_onnx", "export_program",
           "pick_device", "require_onnx_packages", "unsupported_reason"]
