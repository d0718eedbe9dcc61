"""The worst images of an evaluation, predictions beside ground truth, as JPEGs.

AP says how good a model is; these pictures say what goes wrong (missed small objects,
duplicate boxes, confused classes). Both halves use the same class colours, so a wrong
class shows up as a colour change between the two sides.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mrcnn_cli.atomic import write_bytes
from mrcnn_cli.decode import decode_image
from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import DecodeError, FailedItem
from mrcnn_cli.evaluation.coco_io import GroundTruth
from mrcnn_cli.evaluation.metrics import ImageScore
from mrcnn_cli.writers.overlay import annotate, encode_jpeg

GALLERY_DIR = "worst"
MAX_WIDTH = 2048  # side-by-side pictures wider than this are scaled down
SMALL_SIDE = 320  # images whose longer side is shorter are enlarged before drawing,
ENLARGED_SIDE = 512  # to at least this
_OURS = re.compile(r"^\d{2,}_.*\.jpg$")


def _class_tables(gt: GroundTruth) -> tuple[tuple[str, ...], tuple[int, ...], dict[int, int]]:
    ids = tuple(gt.category_ids)
    names = tuple(gt.category_names[c] for c in ids)
    return names, ids, {cid: i for i, cid in enumerate(ids)}


def ground_truth_detections(
    gt: GroundTruth, image_id: int, cat_ids: Sequence[int], with_masks: bool
) -> Detections:
    """The image's non-crowd annotations of `cat_ids` as Detections (score 1)."""
    names, ids, label_of = _class_tables(gt)
    info = gt.image(image_id)
    height, width = int(info["height"]), int(info["width"])
    wanted = set(cat_ids)
    anns = [
        a
        for a in gt.coco.imgToAnns.get(image_id, [])
        if not a.get("iscrowd", 0) and int(a["category_id"]) in wanted
    ]
    if not anns:
        return Detections.empty(height, width, names, ids)
    boxes = np.array([a["bbox"] for a in anns], np.float32)
    boxes[:, 2:] += boxes[:, :2]
    masks = np.stack([gt.coco.annToMask(a).astype(bool) for a in anns]) if with_masks else None
    return Detections(
        boxes=boxes,
        scores=np.ones(len(anns), np.float32),
        labels=np.array([label_of[int(a["category_id"])] for a in anns]),
        masks=masks,
        class_names=names,
        category_ids=ids,
    )


def result_detections(
    gt: GroundTruth, entries: Sequence[dict[str, Any]], height: int, width: int, with_masks: bool
) -> Detections:
    """COCO result entries of one image (already filtered) as Detections."""
    names, ids, _ = _class_tables(gt)
    return Detections.from_coco(entries, height, width, names, ids, with_masks=with_masks)


def enlarged(image: np.ndarray, dets: Detections) -> tuple[np.ndarray, Detections]:
    """Small images (the demo model's are 128 px) blown up by a whole factor, pixels kept
    square, with their detections, so labels drawn on them stay readable."""
    side = max(image.shape[:2])
    if side >= SMALL_SIDE:
        return image, dets
    factor = -(-ENLARGED_SIDE // side)  # ceiling division
    big = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    masks = None if dets.masks is None else dets.masks.scaled(factor)
    return big, replace(dets, boxes=dets.boxes * factor, masks=masks)


def _titled(image: np.ndarray, title: str) -> np.ndarray:
    """The image under a dark strip carrying `title`."""
    width = image.shape[1]
    scale = max(0.45, width / 1100)
    thickness = max(1, round(scale * 1.6))
    (_, th), baseline = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    strip = np.full((th + baseline + 12, width, 3), 32, np.uint8)
    cv2.putText(strip, title, (6, 6 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thickness, cv2.LINE_AA)  # fmt: skip
    return np.vstack([strip, image])


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two same-height RGB images with a white gap, scaled down to MAX_WIDTH if wider."""
    spacer = np.full((left.shape[0], gap, 3), 255, np.uint8)
    out = np.hstack([left, spacer, right])
    if out.shape[1] > MAX_WIDTH:
        scale = MAX_WIDTH / out.shape[1]
        size = (MAX_WIDTH, max(1, round(out.shape[0] * scale)))
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
    return out


def write_gallery(
    gt: GroundTruth,
    results: Sequence[dict[str, Any]],
    worst: Sequence[ImageScore],
    image_paths: Mapping[int, Path],
    out_dir: Path,
    cat_ids: Sequence[int],
    score_thr: float,
    iou_label: str,
    with_masks: bool,
) -> tuple[list[Path], list[FailedItem]]:
    """One JPEG per image in `worst` order under out_dir/worst/; stale ones from an
    earlier run are removed so the folder always shows this evaluation only."""
    folder = out_dir / GALLERY_DIR
    wanted = set(cat_ids)
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    worst_ids = {s.image_id for s in worst}
    for entry in results:
        if (
            entry["image_id"] in worst_ids
            and entry["score"] >= score_thr
            and entry["category_id"] in wanted
        ):
            by_image[entry["image_id"]].append(entry)
    written: list[Path] = []
    problems: list[FailedItem] = []
    for rank, score in enumerate(worst, start=1):
        path = image_paths.get(score.image_id)
        info = gt.image(score.image_id)
        if path is None:
            problems.append(FailedItem(str(info.get("file_name", score.image_id)), "no image file"))
            continue
        try:
            image = decode_image(path)
        except DecodeError as exc:
            problems.append(FailedItem(path, str(exc)))
            continue
        height, width = int(info["height"]), int(info["width"])
        if image.shape[:2] != (height, width):
            problems.append(FailedItem(path, f"image is {image.shape[1]}x{image.shape[0]}, "
                                             f"the annotations say {width}x{height}"))  # fmt: skip
            continue
        entries = sorted(by_image.get(score.image_id, []), key=lambda e: -e["score"])
        preds = result_detections(gt, entries, height, width, with_masks)
        truth = ground_truth_detections(gt, score.image_id, cat_ids, with_masks)
        shown, preds = enlarged(image, preds)
        _, truth = enlarged(image, truth)
        left = _titled(
            annotate(shown, preds),
            f"predictions >= {score_thr:.2f}: {len(preds)}, {score.false_pos} wrong",
        )
        right = _titled(
            annotate(shown, truth),
            f"ground truth: {score.gt_instances}, {score.missed} missed ({iou_label})",
        )
        target = folder / f"{rank:02d}_{score.image_id}_{Path(path).stem}.jpg"
        write_bytes(target, encode_jpeg(side_by_side(left, right)))
        written.append(target)
    if folder.is_dir():
        for old in folder.iterdir():
            if _OURS.match(old.name) and old not in written:
                old.unlink()
    return written, problems
