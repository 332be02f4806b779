"""MVTec LOCO AD: <root>/<category>/{train/good, validation/good,
test/{good,logical_anomalies,structural_anomalies}/<id>.png, ground_truth/<type>/<id>/000.png..., defects_config.json}.

Each ground-truth PNG is one defect channel whose single positive pixel value selects an entry of
defects_config.json; items carry all channels of an image (mask_mode "channels")."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .common import AnomalyDataset, DatasetError, Sample, list_images, require_dir

CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
ANOMALY_TYPES = ("logical_anomalies", "structural_anomalies")


@dataclass(frozen=True)
class DefectConfig:
    """One entry of defects_config.json."""
    defect_name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool

    def saturation_area(self, defect_area: int) -> int:
        """floor(threshold * area) if relative, else min(threshold, area) (MVTec LOCO definition)."""
        if self.relative_saturation:
            return int(self.saturation_threshold * defect_area)
        return int(min(self.saturation_threshold, defect_area))


def read_defects_config(path: Path) -> dict[int, DefectConfig]:
    """Parse defects_config.json into {pixel_value: DefectConfig}, validating every entry."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"defects config not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot parse {path}: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path} must hold a non-empty JSON list of defect entries")
    config: dict[int, DefectConfig] = {}
    for i, e in enumerate(entries):
        try:
            entry = DefectConfig(str(e["defect_name"]), int(e["pixel_value"]), e["saturation_threshold"],
                                 bool(e["relative_saturation"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{path}: entry {i} is malformed ({err!r})") from None
        if not 1 <= entry.pixel_value <= 255:
            raise DatasetError(f"{path}: entry {i} has pixel_value {entry.pixel_value} outside 1..255")
        thr = entry.saturation_threshold
        if entry.relative_saturation and not (isinstance(thr, float) and 0.0 < thr <= 1.0):
            raise DatasetError(f"{path}: entry {i} is relative but its saturation_threshold {thr!r} "
                               "is not a float in (0, 1]")
        if not entry.relative_saturation and not (isinstance(thr, int) and thr > 0):
            raise DatasetError(f"{path}: entry {i} is absolute but its saturation_threshold {thr!r} "
                               "is not a positive integer")
        if entry.pixel_value in config:
            raise DatasetError(f"{path}: pixel_value {entry.pixel_value} appears twice")
        config[entry.pixel_value] = entry
    return config


def _channels(gt_dir: Path) -> tuple[Path, ...]:
    require_dir(gt_dir, "ground-truth folder")
    pngs = sorted(p for p in gt_dir.iterdir() if p.suffix == ".png")
    if not pngs:
        raise DatasetError(f"ground-truth folder {gt_dir} holds no .png channel")
    return tuple(pngs)


def build(root: Path, category: str, split: str, image_size: int, seed: int = 0) -> AnomalyDataset:
    """``seed`` is unused: LOCO ships its own validation split."""
    cat_dir = require_dir(Path(root) / category, f"mvtec_loco category {category!r}")
    config = read_defects_config(cat_dir / "defects_config.json")
    if split in ("train", "validation"):
        d = require_dir(cat_dir / split / "good", f"{split} folder")
        samples = [Sample(p, 0, "good") for p in list_images(d)]
    else:
        test_dir = require_dir(cat_dir / "test", "test folder")
        samples = []
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            if defect != "good" and defect not in ANOMALY_TYPES:
                raise DatasetError(f"unexpected test folder {defect_dir}: expected good or one of {ANOMALY_TYPES}")
            for p in list_images(defect_dir):
                if defect == "good":
                    samples.append(Sample(p, 0, defect))
                else:
                    samples.append(Sample(p, 1, defect, _channels(cat_dir / "ground_truth" / defect / p.stem)))
    ds = AnomalyDataset(samples, image_size, name="mvtec_loco", category=category, split=split,
                        mask_mode="channels", defects_config=config, root=Path(root))
    return ds
