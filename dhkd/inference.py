"""Former home of the deployment module, kept so ``from dhkd.inference import AnomalyDetector`` keeps
working: the module now lives in :mod:`dhkd.runtime`."""
from dhkd.runtime.detector import AnomalyDetector

__all__ = ["AnomalyDetector"]
