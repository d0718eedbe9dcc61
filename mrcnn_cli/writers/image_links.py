"""The input images placed beside a dataset's labels: `yolo/images/<rel>`, `coco/images/...`.

Training tools find an image's labels from the image's own path (Ultralytics swaps
`images` for `labels`), and dataset importers (Datumaro, FiftyOne, CVAT) read images from
a folder next to the annotation file, so a dataset export needs the images inside it.
By default each is a symbolic link to the input (absolute, so the output folder can be
read from anywhere on this machine: no bytes copied); `copy=True` copies the file
(a dataset to move to another machine). Where links cannot be made (a filesystem
without them) the file is copied. Both are atomic: a temp name renamed into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.writers import safe_rel


def dataset_image_path(folder: Path, rel: PurePosixPath | str) -> Path:
    """`<folder>/<rel>`, the input's relative path kept as it is (suffix included)."""
    return Path(folder, *safe_rel(rel).parts)


def place_image(source: Path, target: Path, copy: bool = False) -> None:
    """Link (or copy) `source` to `target`, replacing what is there."""
    source = Path(os.path.abspath(source))
    with atomic_path(target) as tmp:
        if not copy:
            tmp.unlink()
            try:
                os.symlink(source, tmp)
                return
            except OSError:  # no links here (some network and FAT filesystems)
                pass
        shutil.copyfile(source, tmp)
