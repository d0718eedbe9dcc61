"""COCO bbox / segm evaluation with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


@dataclass
class CocoMetrics:
    """The 12 standard COCO numbers for one IoU type, plus the raw COCOeval for plots."""

    iou_type: str
    stats: list[float]
    cocoeval: COCOeval | None = None

    def as_dict(self) -> dict[str, float]:
        return dict(zip(STAT_NAMES, self.stats))

    @property
    def ap(self) -> float:
        return self.stats[0]


def quiet_coco(gt: dict[str, Any]) -> COCO:
    """Build a COCO index from a dict without pycocotools' prints."""
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_results(
    coco_gt: COCO,
    results: Sequence[dict[str, Any]],
    iou_type: str,
    img_ids: Sequence[int] | None = None,
    cat_ids: Sequence[int] | None = None,
) -> CocoMetrics:
    """Run COCOeval; an empty result list scores 0 (no crash), as it honestly should."""
    if not results:
        return CocoMetrics(iou_type, [0.0] * len(STAT_NAMES))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(max(s, 0.0)) if s != -1 else float("nan") for s in np.asarray(ev.stats)]
    return CocoMetrics(iou_type, stats, ev)
