"""benchmarks/gpu_check.sh runs end to end without a GPU: preflight written, every GPU step skipped with a
line saying so, exit status 0, and nothing but the summary in the output folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_without_gpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "-- torch" in summary and "GPU visible: False" in summary
    for step in ("build", "ss2d", "latency", "tests[ss2d]", "fused", "small"):
        assert f"== {step}: SKIPPED" in summary, step
    assert "== overall: OK" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.txt"]
