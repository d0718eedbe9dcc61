"""Mask PNGs: one 16-bit id map per image, or one 0/255 PNG per instance.

Overlap rule (all formats that fold instances into one map): where masks overlap, the
higher-scoring instance wins; equal scores go to the one earlier in `dets` order. Since
post-processing sorts by score, that is simply "the earlier instance wins", and instance
id k in the map is the k-th entry of predictions.json for that image.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from mrcnn_cli.atomic import write_bytes
from mrcnn_cli.box_masks import BoxMasks
from mrcnn_cli.config import MASK_FORMATS, MaskFormat
from mrcnn_cli.detections import Detections
from mrcnn_cli.writers import output_path

_UINT16_MAX = np.iinfo(np.uint16).max
_BINARY_NAME = re.compile(r"^\d+_.*\.png$")


def mask_bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices of the smallest box holding every True pixel; None if empty.

    Lets writers touch only the pixels near an instance instead of the whole image.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def paint_order(dets: Detections) -> np.ndarray:
    """Indices to paint in so the winner of every overlap is painted last.

    Winner: highest score, ties to the earlier instance (see the module docstring).
    """
    priority = np.argsort(-dets.scores, kind="stable")
    return priority[::-1]


def _checked_masks(dets: Detections, height: int, width: int) -> BoxMasks:
    if dets.masks is None:
        if len(dets):
            raise ValueError("detections have no masks; mask output needs a mask model")
        return BoxMasks.empty(height, width)
    if dets.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {dets.masks.shape[1:]}, image is {(height, width)}")
    return dets.masks


def _value_map(dets: Detections, height: int, width: int, values: np.ndarray) -> np.ndarray:
    """uint16 [H, W]: 0 background, `values[i]` where instance i wins."""
    masks = _checked_masks(dets, height, width)
    if values.size and (values.min() < 1 or values.max() > _UINT16_MAX):
        low, high = values.min(), values.max()
        raise ValueError(f"map values must be in 1..{_UINT16_MAX}, got {low}..{high}")
    out = np.zeros((height, width), np.uint16)
    for i in paint_order(dets):
        rows, cols = masks.region(i)
        out[rows, cols][masks.crops[i]] = values[i]
    return out


def instance_id_map(dets: Detections, height: int, width: int) -> np.ndarray:
    """uint16 [H, W]: 0 background, k = 1..N for the k-th detection (predictions order)."""
    if len(dets) > _UINT16_MAX:
        raise ValueError(f"{len(dets)} instances do not fit a 16-bit id map")
    return _value_map(dets, height, width, np.arange(1, len(dets) + 1, dtype=np.int64))


def semantic_map(dets: Detections, height: int, width: int) -> np.ndarray:
    """uint16 [H, W]: 0 background, else the COCO category id of the winning instance."""
    category_ids = np.asarray(dets.coco_category_ids, dtype=np.int64)
    return _value_map(dets, height, width, category_ids)


def safe_class_name(name: str) -> str:
    """A class name usable in a file name on every OS ("traffic light" -> "traffic-light")."""
    cleaned = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-.")
    return cleaned or "class"


def binary_mask_names(dets: Detections) -> list[str]:
    """`<k>_<class>.png` for k = 1..N, zero-padded (at least 3 digits) so names sort by k."""
    digits = max(3, len(str(len(dets))))
    return [f"{k:0{digits}d}_{safe_class_name(name)}.png" for k, name in enumerate(dets.names, 1)]


def _png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode a {image.dtype} {image.shape} PNG")
    return buf.tobytes()


def _write_binary(folder: Path, dets: Detections, height: int, width: int) -> list[Path]:
    masks = _checked_masks(dets, height, width)
    paths = [folder / name for name in binary_mask_names(dets)]
    for path, mask in zip(paths, masks, strict=True):
        write_bytes(path, _png_bytes(mask.astype(np.uint8) * 255))
    remove_stale_instance_files(folder, keep=set(paths))
    return paths


def remove_stale_instance_files(folder: Path, keep: set[Path]) -> None:
    """Drop `<k>_<class>.png` files left by an earlier run that found more instances.

    Shared by every writer that puts one PNG per instance in a per-image folder (binary
    masks, crops): a rerun must not leave instance 7 of 7 beside a new result of 5.
    """
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path not in keep and path.is_file() and _BINARY_NAME.match(path.name):
            path.unlink()


def write_masks(
    out_dir: Path,
    rel: PurePosixPath | str,
    dets: Detections,
    height: int,
    width: int,
    fmt: MaskFormat,
) -> list[Path]:
    """Write one image's masks; return the files written.

    instance / semantic: `masks/<rel without suffix>.png` (16-bit, written even with no
    detections so every image has one); binary: `masks/<rel without suffix>/<k>_<class>.png`
    (8-bit 0/255, none when there are no detections).
    """
    if fmt == "binary":
        return _write_binary(output_path(out_dir, "masks", rel, ""), dets, height, width)
    if fmt == "instance":
        id_map = instance_id_map(dets, height, width)
    elif fmt == "semantic":
        id_map = semantic_map(dets, height, width)
    else:
        raise ValueError(f"unknown mask format {fmt!r}; choose from {', '.join(MASK_FORMATS)}")
    path = output_path(out_dir, "masks", rel, ".png")
    write_bytes(path, _png_bytes(id_map))
    return [path]


def read_id_map(path: Path) -> np.ndarray:
    """The uint16 map of an instance or semantic PNG, exactly as written."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(f"{path} is not a 16-bit single-channel PNG")
    return image


def read_instance_masks(path: Path, count: int | None = None) -> np.ndarray:
    """bool [N, H, W] from an instance PNG; N = `count`, or else the highest id present.

    Pass `count` (the image's number of detections) when the last instances may be
    fully hidden by earlier ones, which leaves their ids out of the map.
    """
    id_map = read_id_map(path)
    n = int(id_map.max()) if count is None else count
    ids = np.arange(1, n + 1, dtype=np.uint16)
    return id_map[None, :, :] == ids[:, None, None]
