"""dhkd.persistence: atomic writes, kill-safe checkpoint pairs, weights checks, optimizer state."""
import json
import os

import pytest
import torch

import dhkd.persistence.atomic as atomic
from dhkd.persistence import (CheckpointError, CheckpointFiles, WeightsFileError, atomic_write_bytes,
                              load_optimizer_state, optimizer_state, read_safetensors, remove_temporaries,
                              save_safetensors)


def test_atomic_write_keeps_the_old_file_on_failure_and_follows_the_umask(tmp_path):
    path = tmp_path / "f.bin"
    old = os.umask(0o027)
    try:
        atomic_write_bytes(path, b"old")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)

    def failing(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(path, failing)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_remove_temporaries_only_touches_ours(tmp_path):
    (tmp_path / ".checkpoint.json.abc123.tmp").write_text("x")
    (tmp_path / "notes.tmp").write_text("user file")
    (tmp_path / "checkpoint.json").write_text("{}")
    assert [p.name for p in remove_temporaries(tmp_path)] == [".checkpoint.json.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "notes.tmp"]


class _Killed(BaseException):
    pass


def test_checkpoint_pair_survives_a_kill_at_every_operation(tmp_path, monkeypatch):
    """The generic pair (used by training and distillation): after a kill at any file operation of a save,
    load() returns either the previous or the new checkpoint, complete, and the next save leaves no debris."""
    import pathlib

    import dhkd.persistence.weights as weights

    def save(folder, step):
        CheckpointFiles(folder).save(step, {"w": torch.full((3,), float(step))}, {"note": f"s{step}"})

    state = {"count": 0, "at": None, "dead": False}

    def wrap(fn):
        def op(*args, **kwargs):
            if state["at"] is not None:
                if state["dead"] or state["count"] == state["at"]:
                    state["dead"] = True
                    raise _Killed
                state["count"] += 1
            return fn(*args, **kwargs)
        return op

    for owner, name in ((atomic.tempfile, "mkstemp"), (atomic, "_fsync"), (atomic.os, "chmod"),
                        (atomic.os, "replace"), (atomic.os, "unlink"), (pathlib.Path, "unlink"),
                        (pathlib.Path, "write_bytes"), (weights, "save_file")):
        monkeypatch.setattr(owner, name, wrap(getattr(owner, name)))
    total = None
    at = 0
    while total is None or at < total:
        folder = tmp_path / f"k{at}"
        save(folder, 1)
        state.update(count=0, at=at if total is not None else 10**9, dead=False)
        try:
            save(folder, 2)
        except _Killed:
            pass
        if total is None:
            total, at = state["count"], 0
            continue
        state.update(at=None)
        doc, tensors = CheckpointFiles(folder).load()
        assert doc["step"] in (1, 2) and torch.equal(tensors["w"], torch.full((3,), float(doc["step"])))
        assert doc["note"] == f"s{doc['step']}"
        save(folder, 3)
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-00000003.safetensors", "checkpoint.json"]
        at += 1
    assert total >= 10


def test_checkpoint_refusals_name_the_files(tmp_path):
    files = CheckpointFiles(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint.json is missing"):
        files.load()
    files.save(5, {"w": torch.ones(2)}, {})
    (tmp_path / "checkpoint-00000005.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"does not match checkpoint-00000005\.safetensors"):
        files.load()
    (tmp_path / "checkpoint.json").write_text(json.dumps({"step": 5}))
    with pytest.raises(CheckpointError, match="not a checkpoint of this version.*checkpoint-00000005"):
        files.load()


def test_saving_the_same_step_again_never_overwrites_the_committed_file(tmp_path):
    files = CheckpointFiles(tmp_path)
    files.save(4, {"w": torch.ones(2)}, {})
    files.save(4, {"w": torch.zeros(2)}, {})
    doc, tensors = files.load()
    assert doc["tensors"] == "checkpoint-00000004.1.safetensors" and not tensors["w"].any()
    assert len(files.generations()) == 1


def test_weights_checks(tmp_path):
    save_safetensors({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}, tmp_path / "w.safetensors")
    with pytest.raises(WeightsFileError, match=r"w\.safetensors: tensor 'b' holds 1 NaN or infinite"):
        read_safetensors(tmp_path / "w.safetensors")
    assert read_safetensors(tmp_path / "w.safetensors", check_finite_values=False)[0]["a"].sum() == 2
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match=r"t\.safetensors: not a valid safetensors file"):
        read_safetensors(tmp_path / "t.safetensors")


def test_optimizer_state_round_trip():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
    tensors, doc = optimizer_state(opt)
    doc = json.loads(json.dumps(doc))  # what the JSON file keeps
    fresh = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.5)
    load_optimizer_state(fresh, tensors, doc)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][i][k])), (i, k)
