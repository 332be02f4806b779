"""Subnormal floats are flushed to zero in every thread of a dhkd process (``dhkd.denormals``): the CLI and
the Trainer set the mode before their first parallel work."""
import subprocess
import sys

import pytest

from dhkd import cli
from dhkd.train import TrainConfig, Trainer
from dhkd.train import trainer as trainer_module

# 4M subnormal values multiplied on 2 threads: how many stay non-zero
_PROBE = """
import torch
{setup}
torch.set_num_threads(2)
x = torch.full((1 << 22,), 1 << 20, dtype=torch.int32).view(torch.float32)  # the bits of 1.47e-39, no arithmetic
print(int(((x * 1.0).view(torch.int32) != 0).sum()))
"""


def _nonzero_after_multiply(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup)], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1])


def test_flush_reaches_every_thread_when_set_first():
    if _nonzero_after_multiply("") != 1 << 22:
        pytest.skip("this CPU flushes subnormals by default")
    assert _nonzero_after_multiply("from dhkd.denormals import flush_denormals\nassert flush_denormals()") == 0


def test_cli_and_trainer_set_it_first(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "flush_denormals", lambda: calls.append("cli") or True)
    monkeypatch.setattr(trainer_module, "flush_denormals", lambda: calls.append("trainer") or True)
    with pytest.raises(SystemExit, match="give exactly one of --maps"):  # the command runs after the flush
        cli.main(["evaluate", "--dataset", "synthetic", "--root", str(tmp_path), "--category", "c",
                  "--output", str(tmp_path / "out")])
    Trainer(TrainConfig(preset="tiny", dataset="synthetic", root=str(tmp_path), category="c", teacher="random",
                        image_size=64, steps=1, evaluate=False))
    assert calls == ["cli", "trainer"]
