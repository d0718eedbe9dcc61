"""Instance crops: `crops/<rel without suffix>/<k>_<class>.png`, RGBA cut-outs.

Each detection is cut from the RGB image to its integer box (floor of the top-left,
ceiling of the bottom-right, clipped to the image, at least one pixel), with the mask
as alpha (255 inside, 0 outside), so the object can be pasted or browsed on its own.
Names match the binary mask PNGs (`masks.binary_mask_names`), and crops left in the
folder by an earlier run with more instances are removed.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from mrcnn_cli.atomic import write_bytes
from mrcnn_cli.box_masks import BoxMasks
from mrcnn_cli.detections import Detections
from mrcnn_cli.writers import output_path
from mrcnn_cli.writers.masks import binary_mask_names, remove_stale_instance_files


def crop_window(box: np.ndarray, height: int, width: int) -> tuple[slice, slice]:
    """Row and column slices of the integer box around an xyxy float box (>= 1 px)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    left = min(max(math.floor(x1), 0), width - 1)
    top = min(max(math.floor(y1), 0), height - 1)
    right = max(min(math.ceil(x2), width), left + 1)
    bottom = max(min(math.ceil(y2), height), top + 1)
    return slice(top, bottom), slice(left, right)


def instance_crop(
    image: np.ndarray, box: np.ndarray, masks: BoxMasks | None = None, index: int = 0
) -> np.ndarray:
    """RGBA uint8 [h, w, 4]: the image inside the box, alpha 255 on mask `index` of
    `masks` (or everywhere, if None)."""
    rows, cols = crop_window(box, image.shape[0], image.shape[1])
    rgb = image[rows, cols]
    if masks is None:
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
    else:
        alpha = masks.cut(index, rows, cols).astype(np.uint8) * 255
    return np.dstack([rgb, alpha])


def _rgba_png(rgba: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise ValueError(f"could not encode a {rgba.shape} RGBA PNG")
    return buf.tobytes()


def crops_folder(out_dir: Path, rel: PurePosixPath | str) -> Path:
    """`<out_dir>/crops/<rel without suffix>/`."""
    return output_path(out_dir, "crops", rel, "")


def write_crops(
    out_dir: Path, rel: PurePosixPath | str, image_rgb: np.ndarray, dets: Detections
) -> list[Path]:
    """Write one PNG per detection (none without detections); return the files written."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(
            f"expected an HxWx3 uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}"
        )
    height, width = image_rgb.shape[:2]
    if dets.masks is not None and len(dets) and dets.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {dets.masks.shape[1:]}, image is {(height, width)}")
    folder = crops_folder(out_dir, rel)
    paths = [folder / name for name in binary_mask_names(dets)]
    for i, path in enumerate(paths):
        write_bytes(path, _rgba_png(instance_crop(image_rgb, dets.boxes[i], dets.masks, i)))
    remove_stale_instance_files(folder, keep=set(paths))
    return paths
