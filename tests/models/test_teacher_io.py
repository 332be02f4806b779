"""load_teacher / save_teacher: every public key layout, shapes, and rejection of bad files."""
import os
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

from dhkd.models import PDN
from dhkd.persistence import load_teacher, save_teacher
from dhkd.persistence.teacher import TeacherFileError

SEQ_INDEX = {"small": (0, 3, 6, 8), "medium": (0, 3, 6, 8, 10, 12)}


def random_pdn(size, seed=0):
    torch.manual_seed(seed)
    pdn = PDN(size=size, padding=True)
    with torch.no_grad():  # non-default values everywhere, so a mis-mapped tensor changes the output
        for p in pdn.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return pdn.eval()


def nelson_sd(pdn, prefix=""):
    return {f"{prefix}{SEQ_INDEX[pdn.size][i]}.{p}": getattr(conv, p).detach().clone()
            for i, conv in enumerate(pdn.convs) for p in ("weight", "bias")}


def anomalib_sd(pdn, prefix=""):
    return {f"{prefix}conv{i + 1}.{p}": getattr(conv, p).detach().clone()
            for i, conv in enumerate(pdn.convs) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def small():
    return random_pdn("small", 1)


@pytest.fixture(scope="module")
def medium():
    return random_pdn("medium", 2)


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(3))


def _same_outputs(a, b, x):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("size", ["small", "medium"])
@pytest.mark.parametrize("layout", ["nelson", "anomalib", "anomalib-prefixed", "lightning", "ours-pth"])
def test_public_layouts_give_the_same_module(tmp_path, size, layout, small, medium, x):
    ref = small if size == "small" else medium
    if layout == "nelson":
        obj = nelson_sd(ref)
    elif layout == "anomalib":
        obj = anomalib_sd(ref)
    elif layout == "anomalib-prefixed":
        obj = anomalib_sd(ref, "teacher.")
    elif layout == "lightning":  # a full Lightning checkpoint: teacher, student and buffers side by side
        sd = anomalib_sd(ref, "model.teacher.")
        sd.update({k.replace("teacher", "student"): v.clone() for k, v in sd.items()})
        sd["model.mean_std.mean"] = torch.zeros(1, 384, 1, 1)
        obj = {"state_dict": sd, "epoch": 3, "global_step": 70000}
    else:
        obj = ref.state_dict()
    path = tmp_path / f"teacher_{size}.pth"
    torch.save(obj, path)
    loaded = load_teacher(path, size=size)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.size == size and loaded.padding
    _same_outputs(loaded, ref, x)


def test_safetensors_roundtrip_keeps_weights_and_metadata(tmp_path, small, x):
    path = save_teacher(small, tmp_path / "t.safetensors", {"backbone": "test", "steps": 12})
    loaded = load_teacher(path, size="small")
    _same_outputs(loaded, small, x)
    assert loaded.metadata["backbone"] == "test" and loaded.metadata["steps"] == "12"
    assert loaded.metadata["size"] == "small" and loaded.metadata["format"] == "dhkd-pdn"
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not mkstemp's 0600


def test_fp16_file_loads_as_fp32(tmp_path, small, x):
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in nelson_sd(small).items()}, path)
    loaded = load_teacher(path, size="small")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    torch.testing.assert_close(loaded.convs[0].weight, small.convs[0].weight.half().float())


@pytest.mark.parametrize("size,padding,hw", [("small", True, 64), ("small", False, 56),
                                              ("medium", True, 64), ("medium", False, 56)])
def test_output_shapes(tmp_path, size, padding, hw, small, medium):
    path = tmp_path / "t.pth"
    torch.save(nelson_sd(small if size == "small" else medium), path)
    teacher = load_teacher(path, size=size, padding=padding).to("meta")
    assert teacher(torch.empty(2, 3, 256, 256, device="meta")).shape == (2, 384, hw, hw)


def test_small_file_as_medium_says_which_size_it_looks_like(tmp_path, small, medium):
    path = tmp_path / "teacher_small.pth"
    torch.save(nelson_sd(small), path)
    with pytest.raises(TeacherFileError, match=r"teacher_small\.pth.*looks like a PDN-small"):
        load_teacher(path, size="medium")
    path_m = tmp_path / "teacher_medium.pth"
    torch.save(anomalib_sd(medium), path_m)
    with pytest.raises(TeacherFileError, match="looks like a PDN-medium"):
        load_teacher(path_m, size="small")


def test_wrong_shape_missing_and_unexpected_keys(tmp_path, small):
    sd = nelson_sd(small)
    sd["6.weight"] = torch.zeros(256, 256, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(TeacherFileError, match=r"shape\.pth.*convs\.2\.weight has shape \(256, 256, 1, 1\)"):
        load_teacher(tmp_path / "shape.pth", size="small")

    sd = nelson_sd(small)
    del sd["8.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(TeacherFileError, match=r"missing \['convs\.3\.bias'\]"):
        load_teacher(tmp_path / "missing.pth", size="small")

    sd = nelson_sd(small)
    sd["extra_buffer"] = torch.zeros(3)
    torch.save(sd, tmp_path / "unexpected.pth")
    with pytest.raises(TeacherFileError, match=r"unexpected keys \['extra_buffer'\]"):
        load_teacher(tmp_path / "unexpected.pth", size="small")

    sd = nelson_sd(small)
    sd["10.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "index.pth")
    with pytest.raises(TeacherFileError, match="index 10 does not exist"):
        load_teacher(tmp_path / "index.pth", size="small")


def test_corrupt_files_are_rejected(tmp_path, small):
    good_pth, good_st = tmp_path / "good.pth", tmp_path / "good.safetensors"
    torch.save(nelson_sd(small), good_pth)
    save_teacher(small, good_st)
    for src in (good_pth, good_st):
        data = src.read_bytes()
        cut = tmp_path / f"truncated{src.suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(TeacherFileError, match=rf"truncated\{src.suffix}: .*(corrupt|truncated)"):
            load_teacher(cut, size="small")
    for suffix in (".pth", ".safetensors"):
        garbage = tmp_path / f"garbage{suffix}"
        garbage.write_bytes(bytes(range(256)) * 40)
        with pytest.raises(TeacherFileError, match=rf"garbage\{suffix}: "):
            load_teacher(garbage, size="small")
    nan = nelson_sd(small)
    nan["3.bias"][0] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(TeacherFileError, match="NaN"):
        load_teacher(tmp_path / "nan.pth", size="small")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_teacher(tmp_path / "nope.pth", size="small")
    with pytest.raises(ValueError, match="size"):
        load_teacher(good_pth, size="large")


def test_not_a_state_dict(tmp_path, small):
    torch.save([t for t in nelson_sd(small).values()], tmp_path / "list.pth")
    with pytest.raises(TeacherFileError, match=r"list\.pth.*expected a state dict.*list"):
        load_teacher(tmp_path / "list.pth", size="small")
    torch.save({"optimizer": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(TeacherFileError, match="no PDN convolution keys"):
        load_teacher(tmp_path / "other.pth", size="small")
    sd = anomalib_sd(small, "a.")
    sd.update(anomalib_sd(small, "b."))
    torch.save(sd, tmp_path / "two.pth")
    with pytest.raises(TeacherFileError, match="several sets"):
        load_teacher(tmp_path / "two.pth", size="small")


class _Payload:
    """Unpickling this object would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_never_executed(tmp_path, small, legacy):
    marker = tmp_path / "executed"
    sd = nelson_sd(small)
    sd["0.weight"] = _Payload(marker)
    path = tmp_path / "evil.pth"
    if legacy:
        path.write_bytes(pickle.dumps(sd))
    else:
        torch.save(sd, path)
    with pytest.raises(TeacherFileError, match=r"evil\.pth.*weights_only"):
        load_teacher(path, size="small")
    assert not marker.exists()


def test_save_teacher_is_atomic(tmp_path, small, medium, monkeypatch):
    path = save_teacher(small, tmp_path / "t.safetensors")
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("dhkd.persistence.teacher.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_teacher(medium, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_save_teacher_rejects_bad_arguments(tmp_path, small):
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_teacher(small, tmp_path / "t.pth")
    with pytest.raises(TypeError, match="PDN"):
        save_teacher(torch.nn.Linear(2, 2), tmp_path / "t.safetensors")


def test_safetensors_file_with_foreign_tensors(tmp_path):
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(TeacherFileError, match=r"foreign\.safetensors.*no PDN convolution keys"):
        load_teacher(tmp_path / "foreign.safetensors", size="small")
