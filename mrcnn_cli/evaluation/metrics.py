"""COCO bbox / segm metrics with pycocotools' COCOeval: the 12 numbers, per class, per image.

COCOeval prints as it works and fails on an empty results list; the functions here are
quiet, take any list (an empty one scores 0 honestly) and expose what the report and
the worst-images gallery need: per-class AP, precision-recall curves, per-image matches.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_cli.evaluation.coco_io import GroundTruth, indexed_coco

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
# What each of the 12 numbers means, in COCOeval.summarize()'s words.
STAT_LABELS = (
    "IoU=0.50:0.95 area=all maxDets=100",
    "IoU=0.50 area=all maxDets=100",
    "IoU=0.75 area=all maxDets=100",
    "IoU=0.50:0.95 area=small maxDets=100",
    "IoU=0.50:0.95 area=medium maxDets=100",
    "IoU=0.50:0.95 area=large maxDets=100",
    "IoU=0.50:0.95 area=all maxDets=1",
    "IoU=0.50:0.95 area=all maxDets=10",
    "IoU=0.50:0.95 area=all maxDets=100",
    "IoU=0.50:0.95 area=small maxDets=100",
    "IoU=0.50:0.95 area=medium maxDets=100",
    "IoU=0.50:0.95 area=large maxDets=100",
)


@dataclass
class CocoMetrics:
    """The 12 standard COCO numbers for one IoU type, plus the raw COCOeval for plots.

    A number COCOeval cannot compute (-1: e.g. no small objects in the set) is NaN.
    """

    iou_type: str
    stats: list[float]
    cocoeval: COCOeval | None = None

    def as_dict(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, self.stats))

    @property
    def ap(self) -> float:
        return self.stats[0]


def load_results(coco_gt: COCO, results: Sequence[dict[str, Any]], iou_type: str) -> COCO:
    """`coco_gt.loadRes`, quietly, for any list including an empty one.

    For segm the boxes are dropped first: with a `bbox` present, loadRes takes the box
    area as the instance area, which puts masks in the wrong small/medium/large bucket
    (detectron2 and torchvision's reference evaluation drop it for the same reason).
    An empty list (which loadRes cannot take) becomes a results set with no detections,
    so COCOeval scores it honestly: 0 wherever there is ground truth.
    """
    if not results:
        return indexed_coco(
            {
                "images": list(coco_gt.dataset.get("images", [])),
                "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
                "annotations": [],
            }
        )
    entries = copy.deepcopy(list(results))
    if iou_type == "segm":
        for entry in entries:
            entry.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(entries)


def evaluate_results(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    iou_type: str,
    img_ids: Sequence[int] | None = None,
    cat_ids: Sequence[int] | None = None,
) -> CocoMetrics:
    """Run COCOeval (evaluate, accumulate, summarize) without its prints."""
    coco_dt = load_results(coco_gt, results, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        if cat_ids is not None:
            ev.params.catIds = sorted(int(c) for c in cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) if s != -1 else float("nan") for s in np.asarray(ev.stats)]
    return CocoMetrics(iou_type, stats, ev)


# ----------------------------------------------------------------------------- one IoU type
@dataclass(frozen=True)
class ClassAP:
    """One category's AP numbers (None: no ground truth to score against)."""

    category_id: int
    name: str
    ap: float | None
    ap50: float | None
    ap75: float | None
    gt_instances: int
    detections: int


@dataclass
class TypeResult:
    metrics: CocoMetrics
    per_class: list[ClassAP]

    @property
    def iou_type(self) -> str:
        return self.metrics.iou_type


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _area_all_maxdet100(ev: COCOeval) -> tuple[int, int]:
    p = ev.params
    return p.areaRngLbl.index("all"), p.maxDets.index(max(p.maxDets))


def _iou_index(ev: COCOeval, iou: float) -> int:
    found = np.flatnonzero(np.isclose(ev.params.iouThrs, iou))
    if not found.size:
        raise ValueError(f"IoU {iou} is not one of COCOeval's thresholds")
    return int(found[0])


def evaluate_type(
    gt: GroundTruth,
    results: Sequence[dict[str, Any]],
    iou_type: str,
    img_ids: Sequence[int],
    cat_ids: Sequence[int],
) -> TypeResult:
    """The 12 numbers and the per-class table for one IoU type."""
    metrics = evaluate_results(gt.coco, results, iou_type, img_ids, cat_ids)
    return TypeResult(metrics, per_class_ap(gt, metrics.cocoeval, results))


def per_class_ap(gt: GroundTruth, ev: COCOeval, results: Sequence[dict[str, Any]]) -> list[ClassAP]:
    """Per-category AP from `eval['precision']` (area all, 100 dets), -1 cells excluded.

    Sorted best first; categories without ground truth in the evaluated images (AP None)
    come last. Instances counted are the non-crowd ones COCOeval scores against.
    """
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    a, m = _area_all_maxdet100(ev)
    t50, t75 = _iou_index(ev, 0.5), _iou_index(ev, 0.75)
    img_set = set(ev.params.imgIds)
    gt_count: Counter[int] = Counter()
    for img_id in img_set:
        for ann in gt.coco.imgToAnns.get(img_id, []):
            if not ann.get("iscrowd", 0):
                gt_count[int(ann["category_id"])] += 1
    det_count = Counter(int(r["category_id"]) for r in results if int(r["image_id"]) in img_set)
    rows = []
    for k, cat_id in enumerate(ev.params.catIds):
        rows.append(
            ClassAP(
                category_id=int(cat_id),
                name=gt.category_names.get(int(cat_id), str(cat_id)),
                ap=_mean_valid(precision[:, :, k, a, m]),
                ap50=_mean_valid(precision[t50, :, k, a, m]),
                ap75=_mean_valid(precision[t75, :, k, a, m]),
                gt_instances=gt_count[int(cat_id)],
                detections=det_count[int(cat_id)],
            )
        )
    # Rounded: means of identical precisions can differ in the last bit between classes.
    return sorted(
        rows, key=lambda r: (r.ap is None, -round(r.ap or 0.0, 9), -r.gt_instances, r.name)
    )


def recall_thresholds(ev: COCOeval) -> np.ndarray:
    return np.asarray(ev.params.recThrs, dtype=float)


def pr_curve(ev: COCOeval, iou: float | None, category_id: int | None = None) -> np.ndarray | None:
    """Interpolated precision at COCO's 101 recall points (area all, 100 dets).

    `iou` None averages over 0.50:0.95 as AP does; `category_id` None averages over the
    categories that have ground truth. None when nothing has ground truth.
    """
    precision = ev.eval["precision"]
    a, m = _area_all_maxdet100(ev)
    p = precision[:, :, :, a, m] if iou is None else precision[[_iou_index(ev, iou)], :, :, a, m]
    if category_id is not None:
        cats = list(ev.params.catIds)
        if category_id not in cats:
            return None
        p = p[:, :, [cats.index(category_id)]]
    valid = (p > -1).all(axis=1, keepdims=True)  # [T, 1, K]: that (IoU, class) has GT
    if not valid.any():
        return None
    weights = np.broadcast_to(valid, p.shape)
    return (np.where(weights, p, 0.0).sum(axis=(0, 2)) / weights.sum(axis=(0, 2))).astype(float)


# ----------------------------------------------------------------------------- per image
@dataclass(frozen=True)
class ImageScore:
    """How one image fared at one IoU, counting detections at or above a score."""

    image_id: int
    gt_instances: int
    true_pos: int
    false_pos: int

    @property
    def missed(self) -> int:
        return self.gt_instances - self.true_pos

    @property
    def f1(self) -> float:
        denom = 2 * self.true_pos + self.false_pos + self.missed
        return 1.0 if denom == 0 else 2 * self.true_pos / denom


def image_scores(ev: COCOeval, iou: float = 0.5, score_thr: float = 0.5) -> list[ImageScore]:
    """Per-image matches from COCOeval's own matching (area all, up to 100 per class).

    Detections matched to crowd regions are neither right nor wrong, as in AP.
    """
    t = _iou_index(ev, iou)
    all_range = ev.params.areaRng[ev.params.areaRngLbl.index("all")]
    counts: dict[int, list[int]] = {}
    for entry in ev.evalImgs:
        if entry is None or list(entry["aRng"]) != list(all_range):
            continue
        row = counts.setdefault(int(entry["image_id"]), [0, 0, 0])
        row[0] += int((np.asarray(entry["gtIgnore"]) == 0).sum())
        scores = np.asarray(entry["dtScores"], dtype=float)
        if not scores.size:
            continue
        shown = scores >= score_thr
        matched = np.asarray(entry["dtMatches"])[t] > 0
        ignored = np.asarray(entry["dtIgnore"])[t].astype(bool)
        row[1] += int((shown & matched & ~ignored).sum())
        row[2] += int((shown & ~matched & ~ignored).sum())
    return [ImageScore(i, g, tp, fp) for i, (g, tp, fp) in counts.items()]


def worst_images(scores: Sequence[ImageScore], count: int) -> list[ImageScore]:
    """The `count` images with the lowest F1, most errors first on ties; perfect ones never."""
    flawed = [s for s in scores if s.missed + s.false_pos > 0]
    flawed.sort(key=lambda s: (s.f1, -(s.missed + s.false_pos), s.image_id))
    return flawed[:count]
