"""benchmarks/subnormals.py: counts of subnormal values in a safetensors file, and the with/without-flush timing."""
import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

_spec = importlib.util.spec_from_file_location(
    "subnormals", Path(__file__).parents[1] / "benchmarks" / "subnormals.py")
subnormals = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(subnormals)


def test_counts_and_timing(tmp_path, capsys):
    w = torch.randn(4, 3, 4, 4)
    w.view(-1)[:5] = torch.tensor([1 << 20], dtype=torch.int32).view(torch.float32)  # 1.47e-39, subnormal
    path = tmp_path / "w.safetensors"
    save_file({"conv.weight": w, "clean": torch.ones(3), "steps": torch.tensor([3])}, str(path))
    assert subnormals.subnormal_counts({"conv.weight": w, "clean": torch.ones(3)}) == {"conv.weight": (5, 192)}
    assert subnormals.main(["--file", str(path), "--conv", "conv.weight", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "conv.weight (4, 3, 4, 4): 5 of 192 subnormal" in out and "1 of 3 tensors" in out
    assert "without the flush" in out and "x)" in out
    with pytest.raises(SystemExit):
        subnormals.main(["--file", str(path), "--conv", "clean"])
