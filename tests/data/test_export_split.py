"""export_split links exactly the images of the requested split (the hold-out excluded from train)."""
from dhkd.data import build_dataset, synthetic
from dhkd.data.export_split import export_split


def test_export_split_links_train_without_holdout(tmp_path):
    synthetic.ensure(tmp_path / "d", "s", size=32, n_train=10, n_test_good=1, n_test_defect=1)
    n = export_split("synthetic", str(tmp_path / "d"), "s", "train", tmp_path / "out")
    train = build_dataset("synthetic", tmp_path / "d", "s", "train", 32, 0, size=32, n_train=10, n_test_good=1,
                          n_test_defect=1)
    val = build_dataset("synthetic", tmp_path / "d", "s", "validation", 32, 0, size=32, n_train=10,
                        n_test_good=1, n_test_defect=1)
    linked = {p.resolve() for p in (tmp_path / "out").iterdir()}
    assert n == len(train) == len(linked) == 9
    assert linked == {s.path.resolve() for s in train.samples}
    assert not linked & {s.path.resolve() for s in val.samples}
