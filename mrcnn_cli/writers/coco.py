"""COCO results: predictions.json entries (RLE masks) and the images list beside them.

The entries are exactly what `COCO.loadRes` reads, so `mrcnn eval` and any COCO tool can
score a run without conversion.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_cli.atomic import write_json
from mrcnn_cli.detections import Detections, xyxy_to_xywh
from mrcnn_cli.errors import MrcnnError


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool [H, W] mask, `counts` as str so it is JSON-ready."""
    if mask.ndim != 2:
        raise ValueError(f"expected an [H, W] mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def detections_to_results(dets: Detections, image_id: int) -> list[dict[str, Any]]:
    """One COCO result per detection, in `dets` order (bbox xywh, 2 decimals; score, 5)."""
    boxes = xyxy_to_xywh(dets.boxes)
    category_ids = dets.coco_category_ids
    results = []
    for i in range(len(dets)):
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": category_ids[i],
            "bbox": [round(float(v), 2) for v in boxes[i]],
            "score": round(float(dets.scores[i]), 5),
        }
        if dets.masks is not None:
            entry["segmentation"] = encode_rle(dets.masks[i])
        results.append(entry)
    return results


def image_entry(image_id: int, rel: PurePosixPath | str, width: int, height: int) -> dict:
    """An images.json entry; `file_name` is the path relative to the input root."""
    return {"id": int(image_id), "file_name": str(rel), "width": int(width), "height": int(height)}


def write_predictions(path: Path, results: list[dict[str, Any]]) -> None:
    """predictions.json: a plain COCO results list (compact; RLE makes it large)."""
    write_json(path, results)


def write_images_file(path: Path, images: list[dict[str, Any]]) -> None:
    """images.json: which image id is which file, with its size."""
    write_json(path, images, indent=1)


def _load_json(ann_path: Path) -> Any:
    try:
        with open(ann_path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise MrcnnError(f"cannot read annotations {ann_path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MrcnnError(f"annotations {ann_path} are not valid JSON: {exc}") from exc


def image_ids_from_annotations(ann_path: Path) -> dict[str, int]:
    """file_name -> image id from a COCO annotation file, plus basename -> id.

    Basenames are added only when no two images share one, so a folder run over
    `val2017/` matches COCO's plain file names while ambiguous names never guess.
    """
    data = _load_json(ann_path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise MrcnnError(f"{ann_path} is not a COCO annotation file: it has no 'images' list")
    ids: dict[str, int] = {}
    by_base: dict[str, set[int]] = {}
    for entry in images:
        if not isinstance(entry, dict) or "file_name" not in entry or "id" not in entry:
            raise MrcnnError(f"{ann_path}: an 'images' entry lacks 'file_name' or 'id': {entry!r}")
        name = str(entry["file_name"]).replace("\\", "/")
        ids[name] = int(entry["id"])
        by_base.setdefault(PurePosixPath(name).name, set()).add(int(entry["id"]))
    for base, found in by_base.items():
        if len(found) == 1:
            ids.setdefault(base, next(iter(found)))
    return ids


def image_id_for(ids: Mapping[str, int], rel: PurePosixPath | str) -> int | None:
    """The annotation id of an input: by its relative path, else by its file name."""
    rel = PurePosixPath(rel)
    found = ids.get(str(rel))
    return found if found is not None else ids.get(rel.name)


def assign_image_ids(
    rels: Iterable[PurePosixPath | str], known: Mapping[str, int] | None = None
) -> dict[str, int]:
    """rel -> image id for a whole run: annotation ids where known, else fresh ones.

    Fresh ids count up from above every known id in input order, so they never collide
    and are the same on every run over the same inputs (which resume relies on). Two
    inputs matching one annotation image (same file name in two folders): the first
    gets the id, the second a fresh one.
    """
    known = known or {}
    next_id = max(known.values(), default=0) + 1
    assigned: dict[str, int] = {}
    used: set[int] = set()
    for rel in rels:
        found = image_id_for(known, rel)
        if found is None or found in used:
            found, next_id = next_id, next_id + 1
        used.add(found)
        assigned[str(PurePosixPath(rel))] = found
    return assigned
