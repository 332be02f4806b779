"""Copy the natural sample photographs that ship inside installed PyPI packages into a folder.

With no ImageNet at hand, these give an offline, reproducible image folder for ``dhkd distill-teacher``:
scikit-image's bundled ``skimage/data`` photographs and textures, and scikit-learn's two sample
photographs. Synthetic test patterns in those folders (chessboards, phantoms, logos) are left out.

    python -m dhkd.teacher.sample_images DEST
"""
from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path

SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                  "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                  "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def export_sample_images(dest: str | Path) -> list[Path]:
    """Copy the packaged photographs to ``dest`` (created if needed); return the written paths."""
    sources = []
    for package, subdir, names in (("skimage", "data", SKIMAGE_PHOTOS), ("sklearn", "datasets/images", SKLEARN_PHOTOS)):
        try:
            folder = resources.files(package).joinpath(subdir)
        except ModuleNotFoundError as e:
            raise RuntimeError(f"sample images need the package {package!r} "
                               f"({'scikit-image' if package == 'skimage' else 'scikit-learn'})") from e
        for name in names:
            src = folder.joinpath(name)
            if not src.is_file():
                raise FileNotFoundError(f"sample image {name} is missing from the installed {package}")
            sources.append((f"{package}_{name}", src))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, src in sources:
        with resources.as_file(src) as path:
            shutil.copyfile(path, dest / name)
        written.append(dest / name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: copy the sample images into a folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", help="folder to copy the images into")
    args = parser.parse_args(argv)
    paths = export_sample_images(args.dest)
    print(f"wrote {len(paths)} images to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
