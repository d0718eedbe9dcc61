"""objects.csv: one row per detection of the run, for spreadsheets and pandas.

Named csv_table.py, not csv.py, which would shadow the standard library module.
Assembled at the end like the CVAT file: `object_rows` turns one image's detections
into plain dicts (JSON-able, so the engine can journal them for resume), and
`write_objects_csv` writes every image's rows, in input order, atomically.

Columns: image (the input's relative path), image_id (as in predictions.json), class,
category_id, score (5 decimals), bbox_x / bbox_y / bbox_w / bbox_h (xywh, 2 decimals, as
COCO results), mask_area (mask pixels; empty for a model without masks).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.detections import Detections, xyxy_to_xywh

CSV_COLUMNS: tuple[str, ...] = (
    "image",
    "image_id",
    "class",
    "category_id",
    "score",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "mask_area",
)


def object_rows(dets: Detections, rel: PurePosixPath | str, image_id: int) -> list[dict[str, Any]]:
    """One row per detection, in `dets` order."""
    boxes = xyxy_to_xywh(dets.boxes)
    names = dets.names
    category_ids = dets.coco_category_ids
    areas = None if dets.masks is None else dets.masks.areas()
    image = str(PurePosixPath(rel))
    rows = []
    for i in range(len(dets)):
        x, y, w, h = (round(float(v), 2) for v in boxes[i])
        rows.append(
            {
                "image": image,
                "image_id": int(image_id),
                "class": names[i],
                "category_id": category_ids[i],
                "score": round(float(dets.scores[i]), 5),
                "bbox_x": x,
                "bbox_y": y,
                "bbox_w": w,
                "bbox_h": h,
                "mask_area": "" if areas is None else int(areas[i]),
            }
        )
    return rows


def write_objects_csv(path: Path, rows_in_order: Iterable[Mapping[str, Any]]) -> None:
    """Header plus every row, streamed into the file as read; written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="raise")
        writer.writeheader()
        for row in rows_in_order:
            writer.writerow(row)
