"""Former home of the export functions, kept so ``from dhkd.export import export_onnx`` keeps working: they
now live in :mod:`dhkd.runtime.export`."""
from dhkd.runtime.export import as_detector, export_onnx, export_program

__all__ = ["as_detector", "export_onnx", "export_program"]
