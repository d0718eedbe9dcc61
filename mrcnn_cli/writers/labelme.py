"""LabelMe JSON: `labelme/<rel>.json` per image, openable in LabelMe for review or fixes.

One `polygon` shape per part of each instance; every shape of instance k (1-based, the
k-th detection of the image, as in the mask writers) carries `group_id: k`, so LabelMe
and `labelme2coco`-style tools, which key an instance on (label, group_id), keep a
multi-part instance together. Holes are filled (outer outlines only); an instance with
no polygon (a one-pixel or one-pixel-wide mask) has no shape. The score goes in the
shape's free-text `description` ("score=0.9312"). `imagePath` is the input image
relative to the JSON file's folder, the way LabelMe resolves it; `imageData` is null,
so LabelMe loads the image from there.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn_cli.atomic import write_json
from mrcnn_cli.detections import Detections
from mrcnn_cli.remote import is_url
from mrcnn_cli.writers import output_path
from mrcnn_cli.writers.polygons import instance_polygons

LABELME_VERSION = "5.5.0"  # the file layout written here: shapes with description and mask


def labelme_record(
    dets: Detections, image_ref: str, height: int, width: int, epsilon: float = 0.0
) -> dict[str, Any]:
    """The LabelMe document for one image; `image_ref` becomes `imagePath` as given."""
    names = dets.names
    shapes = []
    for i, parts in instance_polygons(dets, epsilon, "LabelMe polygons"):
        for part in parts:
            shapes.append(
                {
                    "label": names[i],
                    "points": [[float(x), float(y)] for x, y in part.tolist()],
                    "group_id": i + 1,
                    "description": f"score={float(dets.scores[i]):.4f}",
                    "shape_type": "polygon",
                    "flags": {},
                    "mask": None,
                }
            )
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_ref,
        "imageData": None,
        "imageHeight": int(height),
        "imageWidth": int(width),
    }


def labelme_path(out_dir: Path, rel: PurePosixPath | str) -> Path:
    """`<out_dir>/labelme/<rel with suffix .json>`."""
    return output_path(out_dir, "labelme", rel, ".json")


def image_ref_from(json_path: Path, image_path: Path | str) -> str:
    """The image as LabelMe finds it: relative to the JSON's folder, with `/` separators.

    Falls back to the absolute path where no relative one exists (another drive); an
    image read from a URL is referred to by its URL.
    """
    if is_url(image_path):
        return str(image_path)
    try:
        ref = os.path.relpath(os.path.abspath(image_path), os.path.abspath(json_path.parent))
    except ValueError:
        ref = os.path.abspath(image_path)
    return Path(ref).as_posix()


def write_labelme(
    out_dir: Path,
    rel: PurePosixPath | str,
    image_path: Path | str,
    dets: Detections,
    height: int,
    width: int,
    epsilon: float = 0.0,
) -> Path:
    """Write one image's LabelMe JSON (shapes may be empty), atomically."""
    path = labelme_path(out_dir, rel)
    record = labelme_record(dets, image_ref_from(path, image_path), height, width, epsilon)
    write_json(path, record, indent=1)
    return path
