"""`--save coco-dataset`: the run as a COCO *instances* dataset that labelling tools import.

predictions.json is a COCO *results* list (what COCOeval scores); tools that import a
dataset (CVAT, Datumaro, FiftyOne, pycocotools' `COCO()`) want the instances layout
instead. Written once at the end of a run from the journal, in input order:

    coco/annotations/instances_default.json
    coco/images/default/<rel>        the inputs (links, or copies with --copy-images)

That is Datumaro's and CVAT's "COCO 1.0" layout (subset `default`): `file_name` is the
input's relative path, relative to `coco/images/default/` (also stated in `info`).
The file has `info` and `licenses` (Datumaro refuses a file without them), `images`
with width and height, `categories` (the model's real classes with their category ids)
and one annotation per detection: `id` (1, 2, ... over the whole run, so unique in a
merged sharded run too), `image_id`, `category_id`, `bbox` (the mask's tight box, xywh),
`area` (mask pixels), `iscrowd: 0`, `score`, and the mask as RLE whose `size` is the
image's [height, width], or with `polygons=True` as polygons (outer outlines of each
part, holes filled, in COCO's continuous coordinates along the pixel edges, so that
pycocotools fills them back to the mask: `polygons.pixel_edge_polygons`). A detection
whose mask is empty is left out: no tool accepts an empty shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from mrcnn_cli import __version__
from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.journal import ImageRecord
from mrcnn_cli.writers.classes import real_labels
from mrcnn_cli.writers.polygons import pixel_edge_polygons

COCO_DATASET_DIR = "coco"
SUBSET = "default"
ANNOTATIONS_FILE = f"instances_{SUBSET}.json"


def coco_dataset_images_dir(out: Path) -> Path:
    """Where the dataset's images are: `file_name` is relative to this folder."""
    return Path(out) / COCO_DATASET_DIR / "images" / SUBSET


def coco_dataset_file(out: Path, name: str = ANNOTATIONS_FILE) -> Path:
    return Path(out) / COCO_DATASET_DIR / "annotations" / name


def categories(class_names: Sequence[str], category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The model's real classes as COCO categories, with the model's own category ids."""
    return [
        {"id": int(category_ids[i]), "name": class_names[i], "supercategory": ""}
        for i in real_labels(class_names)
    ]


def _segmentation(rle: dict[str, Any], polygons: bool) -> Any:
    if not polygons:
        return {"size": list(rle["size"]), "counts": rle["counts"]}
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    return [
        [float(v) for v in part.reshape(-1).tolist()]
        for part in pixel_edge_polygons(mask.astype(bool))
    ]


def image_annotations(
    record: ImageRecord, image_id: int, first_id: int, polygons: bool = False
) -> list[dict[str, Any]]:
    """One image's annotations, ids from `first_id` up (detections without a shape skipped)."""
    out = []
    for entry in record.results:
        rle = entry.get("segmentation")
        if not isinstance(rle, dict):
            continue
        coded = {"size": rle["size"], "counts": str(rle["counts"]).encode("ascii")}
        area = int(mask_utils.area(coded))
        if area == 0:
            continue
        segmentation = _segmentation(rle, polygons)
        if polygons and not segmentation:
            continue
        out.append(
            {
                "id": first_id + len(out),
                "image_id": int(image_id),
                "category_id": int(entry["category_id"]),
                "segmentation": segmentation,
                "area": area,
                "bbox": [float(v) for v in mask_utils.toBbox(coded).tolist()],
                "iscrowd": 0,
                "score": float(entry["score"]),
            }
        )
    return out


def _image(record: ImageRecord, image_id: int) -> dict[str, Any]:
    return {
        "id": int(image_id),
        "file_name": record.rel,
        "width": int(record.width),
        "height": int(record.height),
        "license": 0,
    }


def write_coco_dataset(
    path: Path,
    records: Iterable[ImageRecord] | Any,
    image_ids: Mapping[str, int],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    polygons: bool = False,
) -> int:
    """Stream the instances file (atomically); return the number of annotations.

    `records` is called twice (a callable returning the records in input order): once
    for `images`, once for `annotations`, so nothing is held for the whole run.
    """
    info = {
        "description": "pre-labels by mrcnn",
        "version": __version__,
        "contributor": "mrcnn",
        "url": "",
        "date_created": "",
        "images_root": f"../images/{SUBSET}",  # file_name is relative to this
    }
    head = {"licenses": [{"id": 0, "name": "", "url": ""}], "info": info,
            "categories": categories(class_names, category_ids)}  # fmt: skip
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("{\n")
        for key, value in head.items():
            f.write(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
        f.write('"images": [')
        for k, record in enumerate(records()):
            line = json.dumps(_image(record, image_ids[record.rel]), ensure_ascii=False)
            f.write(("\n" if k == 0 else ",\n") + line)
        f.write('\n],\n"annotations": [')
        for record in records():
            for ann in image_annotations(record, image_ids[record.rel], count + 1, polygons):
                f.write(("\n" if count == 0 else ",\n") + json.dumps(ann))
                count += 1
        f.write("\n]\n}\n")
    return count
