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


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom dhkd.cli import main\nfor argv in (['--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dhkd 0." in proc.stdout and "COMMAND" in proc.stdout


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "default mvtec_ad) (default" not in text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "(default: auto)" in " ".join(capsys.readouterr().out.split())


def test_errors_are_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    argv = ["train", "--dataset", "synthetic", "--root", str(tmp_path), "--category", "c", "--steps", "1"]
    assert main(argv) == 2  # no --teacher
    err = capsys.readouterr().err
    assert "error: training needs a teacher" in err and "docs/teacher.md" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="training needs a teacher"):
        main(argv + ["--debug"])
    monkeypatch.setenv("DHKD_DEBUG", "1")
    with pytest.raises(ValueError, match="training needs a teacher"):
        main(argv)


def test_train_prints_its_run_folder_and_metrics(tmp_path, capsys):
    from dhkd.data import synthetic

    synthetic.ensure(tmp_path / "data", "s", size=64, n_train=4, n_test_good=2, n_test_defect=2)
    assert main(["train", "--dataset", "synthetic", "--root", str(tmp_path / "data"), "--category", "s",
                 "--teacher", "random", "--preset", "tiny", "--image-size", "64", "--steps", "1",
                 "--output", str(tmp_path / "runs"), "--set",
                 "dataset_options={size: 64, n_train: 4, n_test_good: 2, n_test_defect: 2}"]) == 0
    out = capsys.readouterr().out
    run_dir = next((tmp_path / "runs" / "synthetic" / "s").iterdir())
    assert f"run folder: {run_dir}" in out and "image AUROC" in out


def test_predict_reports_unreadable_images_and_scores_the_rest(demo_run, tmp_path, capsys):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(demo_run / "data" / "synthetic" / "test" / "blob", images)
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["predict", str(images), "--model", str(demo_run / "run"), "--output", str(tmp_path / "p"),
                 "--no-heatmaps"]) == 1
    scores = json.loads((tmp_path / "p" / "scores.json").read_text())
    assert len(scores["images"]) == len(list(images.iterdir())) - 1
    assert [os.path.basename(e["path"]) for e in scores["errors"]] == ["broken.png"]
    assert "broken.png" in capsys.readouterr().err


def test_demo_overlays_use_their_own_scale_and_mark_the_threshold(demo_run, capsys):
    import numpy as np

    from dhkd.eval.visualize import THRESHOLD_COLOUR, threshold_overlay

    results = json.loads((demo_run / "run" / "results.json").read_text())
    assert len(list((demo_run / "run" / "overlays").rglob("*.png"))) == len(results["images"])
    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 20:30] = 1.0
    image = np.full((64, 64, 3), 128, np.uint8)
    low, high = threshold_overlay(image, amap * 0.01, 0.5), threshold_overlay(image, amap, 0.5)
    assert low.shape[1] == 64 and low.shape[0] > 64  # colour bar and text below the image
    assert (high[:64] == THRESHOLD_COLOUR).all(axis=-1).any()  # region above the threshold outlined
    assert not (low[:64] == THRESHOLD_COLOUR).all(axis=-1).any()
    # own scale: the faint map of a good image is not stretched to red, its threshold sits at the bar's top
    assert low[:64, :, 0].max() < 200


def test_interrupt_is_one_line(monkeypatch, capsys):
    import dhkd.commands.info as info

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(info, "run", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "dhkd info: interrupted"
