"""The dhkd command line end to end on tiny synthetic data."""
import json
import os
import subprocess
import sys

import pytest

from dhkd.cli import build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"demo", "train", "evaluate", "predict", "info", "distill-teacher"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: dhkd " + name in capsys.readouterr().out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kernels"]["extensions"]["_cpu"] == "built"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--output", str(out), "--steps", "3", "--image-size", "64"]) == 0
    return out


def test_demo_writes_metrics_heatmaps_and_model(demo_run):
    run = demo_run / "run"
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["metrics"]["image_auroc"] <= 1.0
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    assert list((run / "overlays").rglob("*.png"))


def test_predict_and_evaluate_model(demo_run, tmp_path, capsys):
    images = demo_run / "data" / "synthetic" / "test" / "scratch"
    assert main(["predict", str(images), "--model", str(demo_run / "run"), "--output", str(tmp_path / "p"),
                 "--threshold", "0.1"]) == 0
    scores = json.loads((tmp_path / "p" / "scores.json").read_text())["images"]
    assert len(scores) == len(list(images.iterdir())) and all("anomalous" in s for s in scores)
    assert all((tmp_path / "p" / f"{os.path.basename(s['path'])[:-4]}_heatmap.png").is_file() for s in scores)
    assert main(["evaluate", "--model", str(demo_run / "run"), "--dataset", "synthetic", "--root",
                 str(demo_run / "data"), "--category", "synthetic", "--output", str(tmp_path / "e")]) == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["metrics"]["image_auroc"] == json.loads((demo_run / "run" / "results.json").read_text())[
        "metrics"]["image_auroc"]
    with pytest.raises(SystemExit, match="exactly one of"):
        main(["evaluate", "--dataset", "synthetic", "--root", "x", "--category", "c", "--output", "o"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["predict", str(tmp_path / "missing.png"), "--model", str(demo_run / "run"), "--output",
              str(tmp_path / "q")])


def test_predict_modes(demo_run, tmp_path):
    """Another execution mode gives the same scores (channels_last is exact up to rounding); modes the device
    cannot run, and unknown ones, are clear errors."""
    images = demo_run / "data" / "synthetic" / "test" / "scratch"
    scores = {}
    for mode in ("eager", "channels_last"):
        assert main(["predict", str(images), "--model", str(demo_run / "run"), "--output", str(tmp_path / mode),
                     "--mode", mode, "--no-heatmaps"]) == 0
        scores[mode] = [s["score"] for s in json.loads((tmp_path / mode / "scores.json").read_text())["images"]]
    assert scores["channels_last"] == pytest.approx(scores["eager"], rel=1e-5, abs=1e-6)
    with pytest.raises(SystemExit, match="CUDA graphs need a GPU"):
        main(["predict", str(images), "--model", str(demo_run / "run"), "--output", str(tmp_path / "g"),
              "--mode", "cudagraph", "--device", "cpu"])
    with pytest.raises(SystemExit, match="unknown --mode 'fast'"):
        main(["predict", str(images), "--model", str(demo_run / "run"), "--output", str(tmp_path / "f"),
              "--mode", "fast"])


def test_train_two_categories_over_two_torchrun_ranks(tmp_path):
    """Scale-out: each of 2 gloo ranks trains one category; rank 0 gathers the summary table."""
    from dhkd.data import synthetic

    for cat, seed in (("cat_a", 1), ("cat_b", 2)):
        synthetic.ensure(tmp_path / "data", cat, seed=seed, size=64, n_train=4, n_test_good=2, n_test_defect=2)
    opts = "dataset_options={size: 64, n_train: 4, n_test_good: 2, n_test_defect: 2}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",  # a free port
           "-m", "dhkd.cli", "train", "--dataset", "synthetic", "--root", str(tmp_path / "data"),
           "--category", "cat_a,cat_b", "--teacher", "random", "--preset", "tiny", "--image-size", "64", "--steps", "2",
           "--device", "cpu", "--output", str(tmp_path / "runs"), "--set", opts]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = list((tmp_path / "runs" / "synthetic").glob("summary-*.json"))
    assert len(summaries) == 1
    rows = json.loads(summaries[0].read_text())
    assert [r["category"] for r in rows] == ["cat_a", "cat_b"]
    assert all(r["image_auroc"] is not None for r in rows)
    assert "| mean |" in summaries[0].with_suffix(".md").read_text()
