"""Root test configuration: Triton runs in interpreter mode on machines without a GPU.

TRITON_INTERPRET must be set before any @triton.jit decorator runs, hence here, before test imports.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
