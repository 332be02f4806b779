"""Faults during training: a kill at every point of a checkpoint write, NaN losses, bad data, bad teachers,
concurrent runs, failed runs, checkpoint files from elsewhere."""
import json
import os
import pathlib
import shutil
import threading

import pytest
import torch

import dhkd.persistence.atomic as atomic
import dhkd.train.trainer as trainer_module
from dhkd.commands.train import evaluator_for
from dhkd.data import DatasetError
from dhkd.persistence import CheckpointError, CheckpointFiles, load_model
from dhkd.persistence.training import load_checkpoint
from dhkd.train import TrainConfig, Trainer
from dhkd.train.trainer import TrainingDiverged

SYNTH = {"preset": "tiny", "image_size": 64, "teacher": "random", "lr": 1e-3, "checkpoint_every": 2,
         "evaluate": False, "log_every": 1}


def _config(data, **kw):
    return TrainConfig(**{**SYNTH, **data.train_options(), **kw})


class Killed(BaseException):
    """Stands for SIGKILL: raised at the chosen file operation and at every one after it."""


class Killer:
    """Counts file-system operations; at operation number ``at`` the 'process' dies: that operation and every
    later one (including the clean-up in ``except`` blocks, which a real kill never runs) raise Killed."""

    def __init__(self, at: int | None):
        self.at, self.count, self.dead = at, 0, False

    def wrap(self, fn):
        def op(*args, **kwargs):
            if self.dead or self.count == self.at:
                self.dead = True
                raise Killed
            self.count += 1
            return fn(*args, **kwargs)
        return op

    def install(self, monkeypatch):
        import dhkd.persistence.weights as weights

        for owner, name in ((atomic.tempfile, "mkstemp"), (atomic, "_fsync"), (atomic.os, "chmod"),
                            (atomic.os, "replace"), (atomic.os, "unlink"), (pathlib.Path, "unlink"),
                            (pathlib.Path, "write_bytes"), (weights, "save_file")):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name)))


def _weights(run_dir):
    return load_model(run_dir / "model.safetensors").state_dict()


def _state_at(run_dir, cfg):
    """Model, optimizer and scheduler restored from a run folder's checkpoint (global RNG states too)."""
    from dhkd.models import DHKD

    model = DHKD.from_preset(cfg.preset, image_size=cfg.image_size)
    opt = torch.optim.Adam(model.student_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_decay_step, cfg.lr_gamma)
    load_checkpoint(run_dir, model, opt, sched)
    return model, opt, sched


def test_kill_between_every_file_operation_of_a_checkpoint_write(synthetic_data, tmp_path, monkeypatch):
    """A run checkpointed at step 2 is killed while writing its step-4 checkpoint, at each file operation in
    turn. What is on disk must then load as exactly the step-2 or the step-4 state of an uninterrupted run
    (same tensor bytes, same JSON), leaving no temporaries; and the trainer resumes from the two kinds of
    leftovers (killed before and after the JSON is replaced) to exactly the uninterrupted run's weights."""
    cfg = _config(synthetic_data, steps=4, run_dir=str(tmp_path / "straight"))
    Trainer(cfg).run()
    reference = _weights(tmp_path / "straight")
    Trainer(_config(synthetic_data, steps=2, run_dir=str(tmp_path / "base"))).run()
    (tmp_path / "base" / "model.safetensors").unlink()
    committed = {step: CheckpointFiles(tmp_path / name).load()[0] for step, name in ((2, "base"), (4, "straight"))}
    model, opt, sched = _state_at(tmp_path / "straight", cfg)

    def killed_save(at, tag=""):
        run = tmp_path / f"kill{at}{tag}"
        shutil.copytree(tmp_path / "base", run)
        killer = Killer(at)
        with monkeypatch.context() as m:
            killer.install(m)
            try:
                trainer_module.save_checkpoint(run, 4, model, opt, sched, cfg.to_dict())
            except Killed:
                pass
        return run, killer

    _, complete = killed_save(None)
    total = complete.count
    assert total >= 10 and not complete.dead  # two files x (create, write, sync, chmod, rename, sync folder) ...
    stepped = {}
    for at in range(total):
        run, killer = killed_save(at)
        assert killer.dead
        doc = CheckpointFiles(run).load()[0]  # removes what the kill left
        assert doc == committed[doc["step"]], f"killed at operation {at}"
        names = sorted(p.name for p in run.iterdir())
        assert [n for n in names if n.startswith(("checkpoint", "."))] == [
            doc["tensors"], "checkpoint.json"], (at, names)
        stepped.setdefault(doc["step"], at)
    assert set(stepped) == {2, 4}

    for step, at in stepped.items():  # the last kill point that still gives step 2, the first that gives 4
        at = max(a for a in range(total) if a < stepped[4]) if step == 2 else at
        run, _ = killed_save(at, "-resumed")
        summary = Trainer(_config(synthetic_data, steps=4, run_dir=str(run))).run()
        assert summary["steps"] == 4
        got = _weights(run)
        assert all(torch.equal(got[k], reference[k]) for k in reference), f"killed at operation {at}"
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_nan_loss_stops_at_that_step(synthetic_data, tmp_path, monkeypatch):
    from dhkd.models import DHKD

    losses, calls = DHKD.losses, []

    def poisoned(self, *args, **kwargs):
        out = losses(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out = {k: v * float("nan") for k, v in out.items()}
        return out
    monkeypatch.setattr(DHKD, "losses", poisoned)
    run = tmp_path / "r"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3 .*lower learning rate.*checkpoint in"):
        Trainer(_config(synthetic_data, steps=6, run_dir=str(run))).run()
    assert len(calls) == 3  # stopped at once, not at the end
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 2
    assert "TrainingDiverged" in json.loads((run / "failed.json").read_text())["error"]


def test_nan_weights_are_refused_at_load(synthetic_data, tmp_path):
    from dhkd.models import DHKD
    from dhkd.persistence import save_model

    model = DHKD.from_preset("tiny", image_size=64)
    name, param = next((n, p) for n, p in model.named_parameters() if not n.startswith("teacher."))
    with torch.no_grad():
        param.view(-1)[3] = float("nan")
    save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=rf"m\.safetensors: tensor '{name}' holds 1 NaN"):
        load_model(tmp_path / "m.safetensors")


def test_training_without_a_teacher_is_an_error(synthetic_data, tmp_path):
    with pytest.raises(ValueError, match=r"--teacher FILE.*docs/teacher\.md.*--teacher random"):
        Trainer(_config(synthetic_data, teacher="", steps=1, run_dir=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()
    with pytest.raises(FileNotFoundError, match="no.such.pth"):
        Trainer(_config(synthetic_data, teacher=str(tmp_path / "no.such.pth"), steps=1, output=str(tmp_path))).run()
    assert not (tmp_path / "synthetic").exists()  # refused before a run folder was made


def test_too_small_image_size_fails_before_any_work(synthetic_data, tmp_path, monkeypatch):
    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher pass ran")
    monkeypatch.setattr(trainer_module, "teacher_statistics", no_teacher_pass)
    with pytest.raises(ValueError, match="input 48×48 is too small for this model"):
        Trainer(_config(synthetic_data, image_size=48, steps=1, output=str(tmp_path))).run()
    assert not (tmp_path / "synthetic").exists()


def test_corrupt_images_are_listed_before_training(synthetic_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_data.root, root)
    train_img = sorted((root / "synthetic" / "train" / "good").iterdir())[0]
    test_img = sorted((root / "synthetic" / "test" / "blob").iterdir())[0]
    train_img.write_bytes(train_img.read_bytes()[:200])  # truncated PNG
    test_img.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=rf"2 of \d+ image files are unreadable") as exc:
        cfg = _config(synthetic_data, root=str(root), steps=1, evaluate=True, output=str(tmp_path / "runs"))
        Trainer(cfg, evaluate_test=evaluator_for(cfg)).run()
    assert train_img.name in str(exc.value) and test_img.name in str(exc.value)
    assert not (tmp_path / "runs").exists()


def test_concurrent_runs_get_distinct_folders(synthetic_data, tmp_path):
    results, errors = [], []

    def train():
        try:
            results.append(Trainer(_config(synthetic_data, steps=1, output=str(tmp_path)), timestamp="same").run())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    dirs = sorted(r["run_dir"] for r in results)
    assert [os.path.basename(d) for d in dirs] == ["same", "same-2"]
    for d in dirs:
        assert {"config.yaml", "model.safetensors", "summary.json"} <= set(os.listdir(d))


def test_failed_run_leaves_no_half_folder(synthetic_data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(trainer_module, "teacher_statistics", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        Trainer(_config(synthetic_data, steps=1, output=str(tmp_path))).run()
    assert list((tmp_path / "synthetic" / "synthetic").iterdir()) == []


def test_files_follow_the_umask(synthetic_data, tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(_config(synthetic_data, steps=1, run_dir=str(tmp_path / "r"))).run()
    finally:
        os.umask(old)
    for p in (tmp_path / "r").iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, p.name


def test_checkpoint_json_damaged_or_from_another_model(synthetic_data, tmp_path):
    run = tmp_path / "r"
    Trainer(_config(synthetic_data, steps=2, run_dir=str(run))).run()
    saved = (run / "checkpoint.json").read_text()
    (run / "checkpoint.json").write_text(saved[: len(saved) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.json is unreadable \(truncated.*checkpoint-00000002"):
        Trainer(_config(synthetic_data, steps=3, run_dir=str(run))).run()
    (run / "checkpoint.json").write_text(saved)
    with pytest.raises(CheckpointError, match=r"another model \(model_overrides: \{\} in the checkpoint, "
                                              r"\{'use_hstm': False\} now"):
        Trainer(_config(synthetic_data, steps=3, model_overrides={"use_hstm": False}, run_dir=str(run))).run()
    assert not (run / "failed.json").exists()  # a refused resume leaves the run as it was


def test_image_check_finds_truncated_and_empty_files(tmp_path):
    import numpy as np
    from PIL import Image

    from dhkd.data.common import check_images, image_problem

    rng = np.random.default_rng(0)
    paths = []
    for suffix in (".jpg", ".png", ".bmp"):
        p = tmp_path / f"ok{suffix}"
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(p)
        paths.append(p)
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        paths.append(cut)
    (tmp_path / "empty.png").write_bytes(b"")
    paths.append(tmp_path / "empty.png")
    assert [p.name for p in paths if image_problem(p) is None] == ["ok.jpg", "ok.png", "ok.bmp"]
    with pytest.raises(DatasetError, match=r"4 of 7 image files are unreadable") as exc:
        check_images(paths)
    assert all(n in str(exc.value) for n in ("cut.jpg", "cut.png", "cut.bmp", "empty.png"))
