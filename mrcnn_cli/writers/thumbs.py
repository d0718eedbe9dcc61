"""Small JPEG thumbnails of the overlays, for the run report's gallery.

Written per image at run time (not at report time) so that building the report never
decodes an image: at 100,000 images the report costs what its data costs. The longest
side is at most `THUMB_SIDE` pixels; smaller images are kept as they are.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from mrcnn_cli.atomic import write_bytes
from mrcnn_cli.writers import output_path
from mrcnn_cli.writers.overlay import encode_jpeg

THUMBS_DIR = "thumbs"
THUMB_SIDE = 256
THUMB_QUALITY = 80


def thumb_path(out_dir: Path, rel: PurePosixPath | str) -> Path:
    """`<out_dir>/thumbs/<rel with suffix .jpg>` (the report derives the same name)."""
    return output_path(out_dir, THUMBS_DIR, rel, ".jpg")


def thumbnail(image_rgb: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """The image scaled so its longest side is at most `side` (area averaging: no aliasing)."""
    height, width = image_rgb.shape[:2]
    scale = side / max(height, width)
    if scale >= 1.0:
        return image_rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA)


def write_thumbnail(out_dir: Path, rel: PurePosixPath | str, drawn_rgb: np.ndarray) -> Path:
    """Write the thumbnail of an already drawn overlay, atomically; return its path."""
    path = thumb_path(out_dir, rel)
    write_bytes(path, encode_jpeg(thumbnail(drawn_rgb), THUMB_QUALITY))
    return path
