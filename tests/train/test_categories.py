"""`--category` resolution (lists, folder discovery for `all`, ELPV's own `all`) and the summary file names."""
import pytest

from dhkd.train import TrainConfig
from dhkd.train.multi import resolve_categories


def test_all_means_every_category_folder(tmp_path):
    for name in ("b", "a"):
        (tmp_path / name / "train").mkdir(parents=True)
    (tmp_path / "no_train").mkdir()
    cfg = TrainConfig(dataset="mvtec_ad", root=str(tmp_path), category="all")
    assert resolve_categories(cfg) == ["a", "b"]


def test_all_without_category_folders_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no category folders"):
        resolve_categories(TrainConfig(dataset="mvtec_ad", root=str(tmp_path), category="all"))


def test_elpv_all_is_its_own_category():
    """ELPV's categories are cell types (all, mono, poly), not folders: `all` must not scan the root."""
    assert resolve_categories(TrainConfig(dataset="elpv", root="installed", category="all")) == ["all"]
    assert resolve_categories(TrainConfig(dataset="elpv", root="installed", category="mono,poly")) == ["mono", "poly"]


def test_duplicate_categories_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        resolve_categories(TrainConfig(dataset="mvtec_ad", root=".", category="a,b,a"))


def test_summaries_of_launches_in_the_same_second_do_not_collide(tmp_path):
    from dhkd.train.multi import claim_summary

    first, second = claim_summary(tmp_path, "20261207-010000"), claim_summary(tmp_path, "20261207-010000")
    assert first.name == "summary-20261207-010000" and second.name == "summary-20261207-010000-2"
    assert first.with_suffix(".json").is_file() and second.with_suffix(".json").is_file()
