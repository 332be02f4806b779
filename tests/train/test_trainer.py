"""Trainer: exact resume, checkpoints, config overrides, teacher statistics."""
import json

import pytest
import torch

from dhkd.persistence import load_model
from dhkd.train import TrainConfig, Trainer
from dhkd.train.trainer import sample_indices

SYNTH = {"preset": "tiny", "image_size": 64, "teacher": "random", "lr": 1e-3, "lr_decay_step": 3, "checkpoint_every": 2, "evaluate": False, "log_every": 1}


def _weights(run_dir):
    return load_model(run_dir / "model.safetensors").state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("cache", [True, False])
def test_resume_is_exact(synthetic_data, tmp_path, cache):
    base = dict(SYNTH, **synthetic_data.train_options(), cache_teacher=cache)
    Trainer(TrainConfig(**base, steps=4, run_dir=str(tmp_path / "straight"))).run()
    Trainer(TrainConfig(**base, steps=2, run_dir=str(tmp_path / "resumed"))).run()
    Trainer(TrainConfig(**base, steps=4, run_dir=str(tmp_path / "resumed"))).run()  # continues from step 2
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    state = json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())
    assert state["step"] == 4 and state["scheduler"]["last_epoch"] == 4
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # decayed ×0.1 after step 3


def test_teacher_cache_over_its_memory_limit_falls_back_to_per_step_teacher(synthetic_data, tmp_path, capsys):
    """A training set whose teacher outputs exceed ``cache_limit_mb`` is not cached (no out-of-memory on large
    sets): the teacher runs per step instead, and the trained weights are the same as with the cache."""
    base = dict(SYNTH, **synthetic_data.train_options(), steps=2)
    Trainer(TrainConfig(**base, run_dir=str(tmp_path / "cached"))).run()
    assert "not caching" not in capsys.readouterr().out
    Trainer(TrainConfig(**base, cache_limit_mb=0, run_dir=str(tmp_path / "lazy"))).run()
    assert "not caching the teacher outputs" in capsys.readouterr().out
    a, b = _weights(tmp_path / "cached"), _weights(tmp_path / "lazy")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_teacher_statistics_and_run_layout(synthetic_data, tmp_path):
    cfg = TrainConfig(**dict(SYNTH, **synthetic_data.train_options(), output=str(tmp_path), steps=1))
    trainer = Trainer(cfg)
    summary = trainer.run()
    run_dir = trainer.run_dir
    assert run_dir.parent == tmp_path / "synthetic" / "synthetic"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()
    model = load_model(run_dir / "model.safetensors")
    assert torch.all(model.teacher_std > 0) and model.teacher_mean.abs().sum() > 0
    assert summary["steps"] == 1


def test_given_teacher_statistics_replace_the_teacher_pass_and_give_the_same_model(synthetic_data, tmp_path,
                                                                                  monkeypatch):
    """Statistics handed in (another run's, same teacher and split) are used as they are, with no pass of their
    own, and the trained weights equal the run that computed them; wrong statistics are refused up front."""
    import dhkd.train.trainer as trainer_module

    base = dict(SYNTH, **synthetic_data.train_options(), steps=2)
    Trainer(TrainConfig(**base, run_dir=str(tmp_path / "first"))).run()
    first = load_model(tmp_path / "first" / "model.safetensors")
    stats = (first.teacher_mean, first.teacher_std)
    monkeypatch.setattr(trainer_module, "teacher_statistics", lambda outputs: pytest.fail("teacher pass ran"))
    Trainer(TrainConfig(**base, run_dir=str(tmp_path / "second")), teacher_stats=stats).run()
    a, b = _weights(tmp_path / "first"), _weights(tmp_path / "second")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="std > 0"):
        Trainer(TrainConfig(**base), teacher_stats=(stats[0], torch.zeros_like(stats[1])))
    with pytest.raises(ValueError, match="channels"):
        Trainer(TrainConfig(**base, run_dir=str(tmp_path / "third")),
                teacher_stats=(stats[0][:, :3], stats[1][:, :3])).run()
    assert not (tmp_path / "third").exists()


def test_the_test_split_evaluation_is_the_step_the_caller_hands_in(synthetic_data, tmp_path):
    """With ``evaluate`` set, the trainer calls the evaluator it was given once, on the trained model and the
    test split, and keeps what it returns; without an evaluator such a config is refused before training."""
    cfg = TrainConfig(**dict(SYNTH, **synthetic_data.train_options(), steps=1, evaluate=True,
                             run_dir=str(tmp_path / "r")))
    with pytest.raises(ValueError, match="no evaluator: pass evaluate_test="):
        Trainer(cfg)
    assert not (tmp_path / "r").exists()
    calls = []

    def evaluate_test(model, test_split, run_dir, *, device, quantiles):
        calls.append((model.training, test_split.split, len(test_split), run_dir, device, quantiles))
        return {"metrics": {"image_auroc": 0.5}}

    trainer = Trainer(cfg, evaluate_test=evaluate_test)
    summary = trainer.run()
    assert calls == [(False, "test", 5, tmp_path / "r", trainer.device, summary["quantiles"])]
    assert summary["results"] == {"metrics": {"image_auroc": 0.5}}
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["results"] == summary["results"]
    calls.clear()
    Trainer(TrainConfig(**dict(SYNTH, **synthetic_data.train_options(), steps=1, run_dir=str(tmp_path / "n"))),
            evaluate_test=evaluate_test).run()
    assert calls == []  # evaluate: false never calls it


def test_time_limit_stops_early_and_resume_continues(synthetic_data, tmp_path):
    base = dict(SYNTH, **synthetic_data.train_options(), run_dir=str(tmp_path / "r"))
    summary = Trainer(TrainConfig(**base, steps=50, time_limit_minutes=1e-9)).run()
    assert summary["steps"] == 0 and summary["planned_steps"] == 50
    assert Trainer(TrainConfig(**base, steps=2)).run()["steps"] == 2


def test_corrupt_checkpoint_is_detected(synthetic_data, tmp_path):
    cfg = TrainConfig(**dict(SYNTH, **synthetic_data.train_options(), steps=2, run_dir=str(tmp_path / "r")))
    Trainer(cfg).run()
    with open(tmp_path / "r" / "checkpoint-00000002.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"garbage!")
    with pytest.raises(ValueError, match="does not match checkpoint-00000002.safetensors"):
        Trainer(TrainConfig(**dict(SYNTH, **synthetic_data.train_options(), steps=3, run_dir=str(tmp_path / "r")))).run()


def test_config_overrides_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: mvtec_ad\nroot: /data\ncategory: bottle\nsteps: 70000\n")
    cfg = TrainConfig.from_yaml(path).override(["lr=3e-4", "model_overrides={use_hstm: false}", "preset=small"])
    assert cfg.steps == 70000 and cfg.lr == 3e-4 and cfg.model_overrides == {"use_hstm": False}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown training config key"):
        cfg.override(["learning_rate=1"])
    with pytest.raises(ValueError, match="steps must be a int"):
        cfg.override(["steps=many"])
    with pytest.raises(ValueError, match="key=value"):
        cfg.override(["steps"])
    with pytest.raises(ValueError, match="--root"):
        TrainConfig(category="x").validate()
    assert TrainConfig().lr == 1e-4 and TrainConfig().weight_decay == 1e-5 and TrainConfig().batch_size == 1


def test_sample_indices_cover_each_epoch():
    seen = [i for s in range(20) for i in sample_indices(5, 3, s, 1)]
    assert all(sorted(seen[e * 5:(e + 1) * 5]) == list(range(5)) for e in range(4))
    assert sample_indices(5, 3, 7, 2) == seen[14:16]


def test_unreadable_config_yaml_names_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("steps: [1, 2\n")
    with pytest.raises(ValueError, match=r"config\.yaml: not a readable YAML training config"):
        TrainConfig.from_yaml(path)


def test_time_triggered_lr_decay_happens_once_and_survives_resume(synthetic_data, tmp_path):
    """lr_decay_time_fraction: when that share of the time limit passes before lr_decay_step (here at once),
    the lr decays once, in place of the step schedule; a resumed run keeps it and does not decay again."""
    base = dict(SYNTH, **synthetic_data.train_options(), run_dir=str(tmp_path / "r"), lr_decay_step=100,
                time_limit_minutes=10.0, lr_decay_time_fraction=1e-9)
    assert Trainer(TrainConfig(**base, steps=2)).run()["final_lr"] == pytest.approx(1e-4)
    state = json.loads((tmp_path / "r" / "checkpoint.json").read_text())
    assert state["scheduler"]["step_size"] == 2**62
    assert Trainer(TrainConfig(**base, steps=4)).run()["final_lr"] == pytest.approx(1e-4)  # resumed: not 1e-5
    slow = dict(base, run_dir=str(tmp_path / "s"), lr_decay_time_fraction=0.9)  # its share never passes
    assert Trainer(TrainConfig(**slow, steps=2)).run()["final_lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("fraction, limit", [(1.0, 60.0), (-0.1, 60.0), (0.8, 0.0)])
def test_lr_decay_time_fraction_is_validated(fraction, limit):
    cfg = TrainConfig(dataset="synthetic", root=".", category="c", teacher="random",
                      lr_decay_time_fraction=fraction, time_limit_minutes=limit)
    with pytest.raises(ValueError, match="lr_decay_time_fraction"):
        cfg.validate()
