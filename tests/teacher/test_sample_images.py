"""The offline sample-image folder: photographs copied out of installed packages."""
import importlib.util

import pytest
from PIL import Image

from dhkd.teacher.images import find_images
from dhkd.teacher.sample_images import SKIMAGE_PHOTOS, SKLEARN_PHOTOS, export_sample_images


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image not installed")
def test_export_sample_images(tmp_path):
    written = export_sample_images(tmp_path / "natural")
    assert len(written) == len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)
    assert find_images(tmp_path / "natural") == sorted(written)
    for path in written:
        with Image.open(path) as im:
            assert min(im.size) >= 64
