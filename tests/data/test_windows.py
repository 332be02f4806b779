"""Input modes (dhkd.data.windows): window plans, cutting, stitching, dataset items."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dhkd.data import build_dataset
from dhkd.data.windows import (INPUT_MODES, WindowDataset, batch_windows, check_same_input_mode, cut_windows,
                               image_windows, plan_windows)
from dhkd.models.scoring import map_and_score, stitch_windows


def test_plans_of_a_wide_and_a_tall_image():
    assert plan_windows((100, 300), 64, "squash").offsets == ((0, 0),)
    pad = plan_windows((100, 300), 64, "pad")  # long side to 64, centred: 21 rows of image in 64
    assert pad.frame == (21, 64) and pad.offsets == ((-21, 0),) and not pad.whole
    tile = plan_windows((100, 300), 64, "tile")  # short side to 64: 192 columns, three windows edge to edge
    assert tile.frame == (64, 192) and tile.offsets == ((0, 0), (0, 64), (0, 128))
    tall = plan_windows((250, 100), 64, "tile")  # 160 rows: three windows, overlapping by 16 rows
    assert tall.frame == (160, 64) and tall.offsets == ((0, 0), (48, 0), (96, 0))
    assert plan_windows((130, 100), 64, "tile").offsets == ((0, 0), (19, 0))  # 83 rows: 2 windows


@pytest.mark.parametrize("mode", INPUT_MODES)
def test_a_square_image_is_one_whole_window_in_every_mode(mode):
    plan = plan_windows((300, 300), 64, mode)
    assert plan.whole and plan.frame == (64, 64) and plan.count == 1


def test_bad_modes_and_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown input_mode 'crop'; expected one of squash, pad, tile"):
        plan_windows((10, 20), 64, "crop")
    with pytest.raises(ValueError, match="must be positive"):
        plan_windows((0, 20), 64, "tile")
    with pytest.raises(ValueError, match="unknown input_mode"):
        build_dataset("synthetic", "x", "c", "test", 64, input_mode="crop")


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 400), w=st.integers(1, 400), side=st.integers(1, 80), mode=st.sampled_from(INPUT_MODES))
def test_stitching_the_windows_of_a_frame_gives_the_frame_back(h, w, side, mode):
    """Every frame pixel lies in at least one window, windows agree where they overlap, and the padding is
    cut off again: stitch(cut(frame)) == frame."""
    plan = plan_windows((h, w), side, mode)
    frame = torch.rand(1, *plan.frame)
    windows = cut_windows(frame, plan)
    assert windows.shape == (plan.count, 1, side, side)
    torch.testing.assert_close(stitch_windows(windows, plan)[0], frame, rtol=0, atol=1e-6)


def test_pad_windows_hold_the_mean_colour_outside_the_image():
    img = Image.fromarray(np.full((50, 100, 3), 255, np.uint8))
    windows, plan = image_windows(img, 64, "pad")
    assert windows.shape == (1, 3, 64, 64) and plan.frame == (32, 64)
    assert torch.all(windows[0, :, :16] == 0) and torch.all(windows[0, :, 48:] == 0)  # normalised mean = 0
    assert torch.all(windows[0, :, 16:48] > 2)  # white, normalised


def test_a_whole_plan_scores_as_without_a_plan():
    fmap = torch.rand(1, 1, 16, 16)
    plan = plan_windows((40, 40), 64, "tile")
    for a, b in zip(map_and_score(fmap, (40, 40), sigma=1.0, top_percent=1.0),
                    map_and_score(fmap, (40, 40), sigma=1.0, top_percent=1.0, plan=plan)):
        assert torch.equal(a, b)


def test_windowed_scoring_scores_the_stitched_image():
    """Three windows of a 64×192 frame: the map at the image size is the stitched map resized; a hot spot in
    the last window lands at the image's right end and decides the score."""
    plan = plan_windows((100, 300), 64, "tile")
    fmaps = torch.zeros(3, 1, 16, 16)
    fmaps[2, 0, 8, 12] = 5.0
    amap, score = map_and_score(fmaps, (100, 300), plan=plan)
    assert amap.shape == (1, 1, 100, 300) and score.shape == (1,)
    y, x = np.unravel_index(int(amap.flatten().argmax()), (100, 300))
    assert 40 <= y <= 60 and 240 <= x <= 280
    assert float(score) == pytest.approx(float(amap.max()))
    with pytest.raises(ValueError, match="the plan has 3 windows, the batch 2 maps"):
        map_and_score(fmaps[:2], (100, 300), plan=plan)


def test_dataset_items_hold_the_windows_of_their_image(non_square_folder):
    root, name = non_square_folder.parent, non_square_folder.name
    test = build_dataset("folder", root, name, "test", 32, input_mode="tile")
    assert "input_mode=tile" in repr(test)
    item = test[0]  # 64×150: frame 32×75, three windows (the next, 100×64: frame 50×32, two)
    assert item["image"].shape == (3, 3, 32, 32) and item["windows"].frame == (32, 75)
    assert item["mask"].shape == (1, 64, 150) and item["size"] == (64, 150)
    x, counts = batch_windows([test[0], test[1]])
    assert counts == [3, 2] and x.shape == (5, 3, 32, 32)
    squash = build_dataset("folder", root, name, "test", 32)
    assert squash[0]["image"].shape == (3, 32, 32) and "windows" not in squash[0]
    assert batch_windows([squash[0], squash[1]])[1] == [1, 1]
    train = build_dataset("folder", root, name, "train", 32, input_mode="tile")
    windows = WindowDataset(train)
    assert len(windows) == sum(3 if int(s.path.stem) % 2 == 0 else 2 for s in train.samples)
    assert windows[1]["image"].shape == (3, 32, 32)
    torch.testing.assert_close(windows[1]["image"], train[windows.index[1][0]]["image"][windows.index[1][1]])


def test_a_model_and_a_dataset_of_different_input_modes_are_refused(non_square_folder, tiny_model):
    test = build_dataset("folder", non_square_folder.parent, non_square_folder.name, "test", 64, input_mode="pad")
    with pytest.raises(ValueError, match="trained with input_mode 'squash' but the dataset cuts images with 'pad'"):
        check_same_input_mode(tiny_model, test)
