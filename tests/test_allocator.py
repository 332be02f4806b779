"""keep_freed_memory: glibc's mallopt is found and accepts the settings on Linux; tensors still work after."""
import ctypes.util
import platform

import pytest
import torch

from dhkd.allocator import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or "glibc" not in platform.libc_ver()[0],
                    reason="glibc only")
def test_keep_freed_memory_on_glibc():
    assert ctypes.util.find_library("c") is not None
    assert keep_freed_memory() is True
    for _ in range(3):  # large allocations now come from the reusable heap; they must still be usable
        t = torch.ones(64 * 2 ** 20 // 4)
        assert float(t.sum()) == t.numel()
