"""FLOP and parameter report: the tiny preset's numbers against hand-computed layer counts."""
import pytest

from dhkd.benchmark.flops import flop_report, format_flop_report, scan_work
from dhkd.cli import main


def conv(cin, cout, k, out):
    """2·C_out·C_in·k²·H_out·W_out FLOPs of a square convolution with a square output."""
    return 2 * cout * cin * k * k * out * out


@pytest.fixture
def report(tiny_model):
    return flop_report(tiny_model, 64)


def test_teacher_and_encoder_flops_by_hand(report):
    # tiny at 64²: PDN-S with widths 16/32/32 and 32 outputs; sizes 67 → pool 34 → 37 → pool 19 → 19 → 16
    teacher = conv(3, 16, 4, 67) + conv(16, 32, 4, 37) + conv(32, 32, 3, 19) + conv(32, 32, 4, 16)
    assert report["modules"]["teacher"]["conv_linear_flops"] == teacher == 44_367_360
    # encoder widths (16, 32, 32): 67 → maxpool 34 → 37 → 37 → maxpool 19 → 19 → 16 → 16
    encoder = (conv(3, 16, 4, 67) + conv(16, 32, 4, 37) + conv(32, 32, 3, 37) + conv(32, 32, 1, 19)
               + conv(32, 32, 4, 16) + conv(32, 32, 1, 16))
    assert report["modules"]["encoder"]["conv_linear_flops"] == encoder == 64_210_432


def test_scan_counts_by_hand(report):
    # f_S 16×16; Gnet stages 16/16, 16/8, 16/2, 16/1 → L = 1, 4, 64, 256; d_inner 16, d_state 4
    assert [s["L"] for s in report["scans"]] == [1, 4, 64, 256]
    E = sum(4 * L * 16 * 4 for L in (1, 4, 64, 256))
    P = sum(4 * L * 16 for L in (1, 4, 64, 256))
    assert report["total"]["scan_E"] == E == 83_200
    assert report["total"]["scan_flops_9E"] == 9 * E == 748_800
    assert report["total"]["scan_flops_min"] == 6 * E + 7 * P == 644_800
    assert report["modules"]["gnet"]["scan_flops_9E"] == 9 * E
    assert report["modules"]["teacher"]["scan_flops_9E"] == 0


def test_totals_are_consistent(report, tiny_model):
    model = tiny_model
    mods, total = report["modules"], report["total"]
    assert total["params"] == sum(p.numel() for p in model.parameters()) == sum(m["params"] for m in mods.values())
    assert total["conv_linear_flops"] == sum(m["conv_linear_flops"] for m in mods.values())
    assert total["flops_with_scan_9E"] == total["conv_linear_flops"] + 9 * total["scan_E"]
    assert "total" in format_flop_report(report)


def test_scan_work_batch_scales():
    one, four = scan_work(4096, 128, 16), scan_work(4096, 128, 16, batch=4)
    assert one["E"] == 4 * 4096 * 128 * 16 and four["E"] == 4 * one["E"]
    assert four["flops_min"] == 4 * one["flops_min"]


def test_batch_and_size_follow_the_input(tiny_model):
    rep = flop_report(tiny_model, 80, batch=2)
    single = flop_report(tiny_model, 80)
    assert rep["total"]["conv_linear_flops"] == 2 * single["total"]["conv_linear_flops"]
    assert rep["image_size"] == [80, 80]


def test_too_small_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="too small"):
        flop_report(tiny_model, 16)


def test_info_flops_cli(capsys):
    assert main(["info", "--flops", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "gnet.blocks.3.ss2d" in out and "6E+7P" in out
    with pytest.raises(SystemExit, match="too small"):
        main(["info", "--flops", "--preset", "tiny", "--image-size", "16"])
