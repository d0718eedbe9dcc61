"""Ultralytics YOLO-seg labels: `yolo/labels/<rel>.txt` per image, `yolo/data.yaml` once.

A label line is `class x1 y1 x2 y2 ...`: the class is the instance's position among the
model's real classes (no `__background__`, no `N/A`; see classes.py), the vertices are
pixel centres divided by the image width / height, 6 decimals.

One line per instance, the Ultralytics convention: its dataset loader reads each line as
one object, and its own converters (`convert_coco`, `masks2segments`) put a multi-part
mask on one line by joining the parts with zero-width bridges; we do the same
(`polygons.join_polygons`). supervision writes a line per part instead, which a reader
then counts as separate objects. Holes are filled (outer outlines only). An instance
with no polygon (a one-pixel or one-pixel-wide mask) gets no line. An image with no
detections gets an empty file, which Ultralytics reads as a background image.

`yolo/` is a dataset Ultralytics trains from as it is (`yolo train data=yolo/data.yaml`):
the inputs are linked (or copied) at `yolo/images/<rel>`, since Ultralytics finds an
image's labels by swapping its last `/images/` for `/labels/`; `data.yaml` has `path`
(the dataset's absolute folder: Ultralytics reads a relative one as relative to its own
datasets folder, not to the file), `train`, `val` (which Ultralytics requires: the train
images unless a split was asked for, then `train.txt`/`val.txt` lists) and `names`.
An input whose relative path has a folder named `images` in it breaks that swap (its
labels would be looked for elsewhere): keep such trees out of YOLO exports.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from mrcnn_cli.atomic import write_text
from mrcnn_cli.detections import Detections
from mrcnn_cli.writers import output_path
from mrcnn_cli.writers.classes import dense_class_index, real_class_names
from mrcnn_cli.writers.polygons import instance_polygons, join_polygons


def yolo_label_lines(dets: Detections, height: int, width: int, epsilon: float = 0.0) -> list[str]:
    """One `class x y x y ...` line per instance that has a polygon, in `dets` order."""
    index = dense_class_index(dets.class_names)
    scale = np.array([width, height], np.float64)
    lines = []
    for i, parts in instance_polygons(dets, epsilon, "YOLO-seg labels"):
        label = int(dets.labels[i])
        if label not in index:
            raise ValueError(f"label {label} ({dets.class_names[label]!r}) is not a real class")
        if not parts:
            continue
        points = np.clip(join_polygons(parts) / scale, 0.0, 1.0).reshape(-1)
        lines.append(" ".join([str(index[label]), *(f"{v:.6f}" for v in points)]))
    return lines


def yolo_label_text(dets: Detections, height: int, width: int, epsilon: float = 0.0) -> str:
    """A label file's text: the lines, newline-terminated; "" with no instances."""
    lines = yolo_label_lines(dets, height, width, epsilon)
    return "".join(line + "\n" for line in lines)


def data_yaml_text(
    class_names: Sequence[str],
    root: Path | str = ".",
    train: str = "images",
    val: str = "images",
) -> str:
    """data.yaml: `path` (`root`), `train`, `val`, `nc` and `names` (index -> name) of the
    real classes.

    Strings are written as JSON strings, which YAML reads as double-quoted scalars, so a
    name with a colon, quote or non-ASCII letter needs no YAML library.
    """
    names = real_class_names(class_names)
    lines = [
        "# YOLO-seg dataset written by mrcnn: images/<rel> (the inputs), labels/<rel>.txt",
        f"path: {json.dumps(str(root), ensure_ascii=False)}",
        f"train: {json.dumps(train)}",
        f"val: {json.dumps(val)}",
        f"nc: {len(names)}",
        "names:",
        *(f"  {k}: {json.dumps(name)}" for k, name in enumerate(names)),
    ]
    return "\n".join(lines) + "\n"


def yolo_images_dir(out_dir: Path) -> Path:
    """`<out_dir>/yolo/images`: the inputs, beside `labels/` (Ultralytics' layout)."""
    return Path(out_dir) / "yolo" / "images"


def yolo_label_path(out_dir: Path, rel: PurePosixPath | str) -> Path:
    """`<out_dir>/yolo/labels/<rel with suffix .txt>`."""
    return output_path(Path(out_dir) / "yolo", "labels", rel, ".txt")


def write_yolo_labels(
    out_dir: Path,
    rel: PurePosixPath | str,
    dets: Detections,
    height: int,
    width: int,
    epsilon: float = 0.0,
) -> Path:
    """Write one image's label file (empty with no detections), atomically."""
    path = yolo_label_path(out_dir, rel)
    write_text(path, yolo_label_text(dets, height, width, epsilon))
    return path


def is_val_image(rel: PurePosixPath | str, val_split: float) -> bool:
    """Whether `rel` is in the val part of a `val_split` split: by a hash of the relative
    path, so the split is the same on every run and machine, whatever the input order."""
    digest = hashlib.sha256(str(PurePosixPath(rel)).encode("utf-8", "surrogateescape"))
    return int.from_bytes(digest.digest()[:8], "big") / 2**64 < val_split


def write_yolo_data_yaml(
    out_dir: Path,
    class_names: Sequence[str],
    rels: Iterable[PurePosixPath | str] | None = None,
    val_split: float = 0.0,
) -> Path:
    """Write `<out_dir>/yolo/data.yaml` (and with `val_split` > 0 the `train.txt` and
    `val.txt` image lists of `rels`, the images done), atomically."""
    root = Path(os.path.abspath(out_dir)) / "yolo"
    train = val = "images"
    if val_split > 0:
        lists: dict[str, list[str]] = {"train": [], "val": []}
        for rel in rels or ():
            part = "val" if is_val_image(rel, val_split) else "train"
            lists[part].append(f"./images/{PurePosixPath(rel)}\n")
        for part, lines in lists.items():
            write_text(root / f"{part}.txt", "".join(lines))
        train, val = "train.txt", "val.txt"
    path = root / "data.yaml"
    write_text(path, data_yaml_text(class_names, root, train, val))
    return path
