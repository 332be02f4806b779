"""Export: ``dhkd evaluate``, ``dhkd predict`` and the exported detectors (torch.export, ONNX under
onnxruntime) give the same maps and scores for the same images; the compact export scan; clear errors."""
import importlib.util
import json

import numpy as np
import pytest
import tifffile
import torch

from dhkd.cli import main
from dhkd.data import build_dataset
from dhkd.data.common import preprocess, read_rgb
from dhkd.eval.evaluator import evaluate_model
from dhkd.persistence import save_model
from dhkd.runtime import AnomalyDetector, export_onnx, export_program, require_onnx_packages

SYN = dict(size=48, n_train=6, n_test_good=2, n_test_defect=3)  # 48×48 originals, the tiny model reads 64×64
AGREE = 1e-6
# the paper's scoring, and the recipe's per-cell normalisation + one-cell smoothing (needs >= 2 validation images)
# + the mean of the map's top 1 % as the image score
SCORING = {"paper": ({}, SYN),
           "recipe": ({"cell_norm": True, "map_sigma": 1.0, "image_score_top": 1.0}, dict(SYN, n_train=20))}


@pytest.fixture(scope="module", params=sorted(SCORING))
def evaluated(request, tmp_path_factory, tiny_model_factory):
    """A tiny model calibrated and evaluated by ``evaluate_model`` (maps exported), saved as a run."""
    overrides, syn = SCORING[request.param]
    tmp = tmp_path_factory.mktemp("agree")
    root = tmp / "data"
    build_dataset("synthetic", root, "synthetic", "test", 64, **syn)
    model = tiny_model_factory(**overrides).eval()
    model.set_teacher_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    results = evaluate_model(model, "synthetic", root, "synthetic", tmp / "eval", export_maps=True, batch_size=3,
                             **syn)
    assert model.has_cell_statistics == bool(overrides)  # `dhkd evaluate --model` fits them with the quantiles
    # 1e-6 in the units of the quantile-normalised map: the per-cell z-score divides its rounding by cell_std
    tol = AGREE / float(model.cell_std.min()) if model.cell_norm else AGREE
    save_model(model, tmp / "run" / "model.safetensors")
    maps = {im["path"]: tifffile.imread(next((tmp / "eval" / "anomaly_maps").rglob(
        f"{im['defect']}/{im['path'].rsplit('/', 1)[1].rsplit('.', 1)[0]}.tiff"))) for im in results["images"]}
    return {"tmp": tmp, "model": model, "results": results, "maps": maps, "tol": tol}


def _images(evaluated):
    paths = [im["path"] for im in evaluated["results"]["images"]]
    return paths, torch.stack([preprocess(read_rgb(p), 64) for p in paths])


def _check(evaluated, paths, maps, scores, what):
    want, tol = {im["path"]: im["score"] for im in evaluated["results"]["images"]}, evaluated["tol"]
    for p, m, s in zip(paths, maps, scores):
        assert abs(float(s) - want[p]) <= tol, f"{what}: score of {p}"
        assert np.abs(np.asarray(m).reshape(48, 48) - evaluated["maps"][p]).max() <= tol, f"{what}: map of {p}"


def test_predict_agrees_with_evaluate(evaluated, tmp_path):
    tmp = evaluated["tmp"]
    folders = sorted({p.rsplit("/", 1)[0] for p in evaluated["maps"]})
    entries = []
    for i, folder in enumerate(folders):
        out = tmp_path / str(i)
        assert main(["predict", folder, "--model", str(tmp / "run"), "--output", str(out), "--no-heatmaps"]) == 0
        entries += json.loads((out / "scores.json").read_text())["images"]
    assert len(entries) == len(evaluated["maps"])
    want = {im["path"]: im["score"] for im in evaluated["results"]["images"]}
    for e in entries:
        assert abs(e["score"] - want[e["path"]]) <= evaluated["tol"], e["path"]


def test_detector_agrees_with_evaluate(evaluated):
    paths, x = _images(evaluated)
    with torch.no_grad():
        maps, scores = AnomalyDetector(evaluated["model"], output_size=(48, 48))(x)
    _check(evaluated, paths, maps, scores, "detector")


def test_torch_export_via_cli_agrees_with_evaluate(evaluated, tmp_path, capsys):
    out = tmp_path / "det.pt2"
    assert main(["export", "--model", str(evaluated["tmp"] / "run"), "--format", "torch-export", "--output",
                 str(out), "--map-size", "48", "48"]) == 0
    assert "wrote" in capsys.readouterr().out
    program = torch.export.load(str(out))
    # only plain PyTorch ops are exported, never the backend custom ops
    assert not any("dhkd" in str(n.target) for n in program.graph.nodes if n.op == "call_function")
    paths, x = _images(evaluated)
    results = [program.module()(x[i:i + 1]) for i in range(len(paths))]
    _check(evaluated, paths, [m for m, _ in results], [s[0] for _, s in results], "torch.export")


def test_onnx_agrees_with_evaluate_under_onnxruntime(evaluated, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(evaluated["model"], tmp_path / "tiny.onnx", 64, map_size=(48, 48))  # optimised, as shipped
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["anomaly_map", "score"]
    paths, x = _images(evaluated)  # the batch axis is dynamic: exported with 2, run with all test images
    maps, scores = session.run(None, {"image": x.numpy()})
    assert maps.shape == (len(paths), 1, 48, 48) and scores.shape == (len(paths),)
    _check(evaluated, paths, maps, scores, "ONNX")


def test_export_rejects_other_modules_unfitted_models_and_bad_sizes(tiny_model_factory, tiny_model):
    with pytest.raises(TypeError, match="DHKD model or an AnomalyDetector"):
        export_program(torch.nn.Conv2d(3, 3, 1), 64)
    with pytest.raises(ValueError, match="quantiles are not fitted"):
        export_program(tiny_model_factory(), 64)
    with pytest.raises(ValueError, match="image_size must be positive"):
        export_program(AnomalyDetector(tiny_model), 0)
    with pytest.raises(ValueError, match="map_size must be positive"):
        export_program(tiny_model, 64, map_size=(0, 5))


def test_missing_export_extra_is_named(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ImportError, match=r"onnxscript.*dhkd\[export\]"):
        require_onnx_packages()
    with pytest.raises(SystemExit, match=r"dhkd export: ONNX export needs onnxscript"):
        main(["export", "--model", str(tmp_path / "none"), "--output", str(tmp_path / "x.onnx")])
