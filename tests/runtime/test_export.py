"""Export: ONNX (onnxruntime parity with eager) and torch.export of the whole AnomalyDetector."""
import numpy as np
import pytest
import torch

from dhkd.cli import main
from dhkd.export import as_detector, export_onnx, export_program
from dhkd.inference import AnomalyDetector
from dhkd.persistence import save_model
from dhkd.models import DHKD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DHKD.from_preset("tiny").eval()
    m.set_teacher_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    m.set_quantiles(0.2, 0.9, 0.05, 0.4)
    return m


def test_onnx_matches_eager_under_onnxruntime(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(model, tmp_path / "tiny.onnx", 64, optimize=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["anomaly_map", "score"]
    x = torch.randn(3, 3, 64, 64)  # the batch axis is dynamic: exported with 2, run with 3
    amap, score = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want_map, want_score = AnomalyDetector(model)(x)
    assert amap.shape == (3, 1, 64, 64) and score.shape == (3,)
    assert np.abs(amap - want_map.numpy()).max() <= 1e-4
    assert np.abs(score - want_score.numpy()).max() <= 1e-4


def test_export_rejects_other_modules_and_unfitted_models():
    with pytest.raises(TypeError, match="DHKD model or an AnomalyDetector"):
        export_program(torch.nn.Conv2d(3, 3, 1), 64)
    with pytest.raises(ValueError, match="quantiles are not fitted"):
        export_program(DHKD.from_preset("tiny"), 64)
    with pytest.raises(ValueError, match="image_size must be positive"):
        export_program(AnomalyDetector(_fitted()), 0)


def _fitted():
    m = DHKD.from_preset("tiny").eval()
    m.set_quantiles(0.1, 1.0, 0.1, 1.0)
    return m


def test_torch_export_program_via_cli_runs_and_matches(model, tmp_path, capsys):
    """``dhkd export --format torch-export`` (export_program with a path): the saved program matches eager."""
    save_model(model, tmp_path / "run" / "model.safetensors")
    out = tmp_path / "det.pt2"
    assert main(["export", "--model", str(tmp_path / "run"), "--format", "torch-export", "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    program = torch.export.load(str(out))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want_map, want_score = as_detector(model)(x)
    amap, score = program.module()(x)
    torch.testing.assert_close(amap, want_map, rtol=0, atol=1e-5)
    torch.testing.assert_close(score, want_score, rtol=0, atol=1e-5)
    # the reference decomposition is exported, never the backend custom ops
    assert not any("dhkd" in str(n.target) for n in program.graph.nodes if n.op == "call_function")
