"""COCO bbox / segm evaluation with pycocotools' COCOeval, and the checks around it.

pycocotools is strict and terse: a result for an unknown image is a bare AssertionError,
an empty results list an IndexError, a mask of the wrong size a crash deep in C. The
loaders here turn each of those into either a one-line `MrcnnError` or a note that the
report shows, so that COCOeval itself only ever sees input it can score.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_cli.errors import MrcnnError

IOU_TYPES = ("bbox", "segm")
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


def _indexed(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def quiet_coco(gt: dict[str, Any]) -> COCO:
    """Build a COCO index from a dict without pycocotools' prints."""
    return _indexed(copy.deepcopy(gt))


def load_results(coco_gt: COCO, results: Sequence[dict[str, Any]], iou_type: str) -> COCO:
    """`coco_gt.loadRes`, quietly, for any list including an empty one.

    For segm the boxes are dropped first: with a `bbox` present, loadRes takes the box
    area as the instance area, which puts masks in the wrong small/medium/large bucket
    (detectron2 and torchvision's reference evaluation drop it for the same reason).
    An empty list (which loadRes cannot take) becomes a results set with no detections,
    so COCOeval scores it honestly: 0 wherever there is ground truth.
    """
    if not results:
        return _indexed(
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


# ----------------------------------------------------------------------------- ground truth
@dataclass
class GroundTruth:
    """An annotation file, indexed; `segm_problem` says why masks cannot be scored."""

    path: Path
    coco: COCO
    image_ids: list[int]  # in file order
    category_names: dict[int, str]  # id -> name, ids ascending
    segm_problem: str | None = None

    @property
    def category_ids(self) -> list[int]:
        return list(self.category_names)

    def image(self, image_id: int) -> dict[str, Any]:
        return self.coco.imgs[image_id]


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MrcnnError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise MrcnnError(f"{what} path is a folder, not a JSON file: {path}") from None
    except OSError as exc:
        raise MrcnnError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MrcnnError(f"{what} {path} is not valid JSON: {exc}") from None


def _has_segmentation(ann: dict[str, Any]) -> bool:
    segm = ann.get("segmentation")
    return isinstance(segm, dict) or (isinstance(segm, list) and len(segm) > 0)


def load_ground_truth(path: Path | str) -> GroundTruth:
    """Read and index a COCO instances file, filling the fields COCOeval needs.

    Hand-made annotation files often lack `iscrowd` or `area`; COCOeval crashes on
    either, so they are filled (0; the mask area, else the box area) rather than refused.
    """
    path = Path(path)
    data = _read_json(path, "annotations")
    if not isinstance(data, dict):
        raise MrcnnError(f"{path} is not a COCO annotation file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise MrcnnError(f"{path} is not a COCO annotation file: it has no {key!r} list")
    for entry in data["images"]:
        if not isinstance(entry, dict) or not {"id", "height", "width"} <= entry.keys():
            raise MrcnnError(
                f"{path}: an 'images' entry lacks 'id', 'height' or 'width': {entry!r}"
            )
    for entry in data["categories"]:
        if not isinstance(entry, dict) or "id" not in entry:
            raise MrcnnError(f"{path}: a 'categories' entry lacks 'id': {entry!r}")
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in data["images"]}
    without_segm = 0
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not {"image_id", "category_id"} <= ann.keys():
            raise MrcnnError(f"{path}: annotation #{i} lacks 'image_id' or 'category_id'")
        if int(ann["image_id"]) not in sizes:
            raise MrcnnError(f"{path}: annotation #{i} is for image id {ann['image_id']}, "
                             "which is not in its 'images' list")  # fmt: skip
        has_segm = _has_segmentation(ann)
        without_segm += not has_segm
        if "bbox" not in ann:
            if not has_segm:
                raise MrcnnError(f"{path}: annotation #{i} has neither 'bbox' nor 'segmentation'")
            rle = _to_rle(ann["segmentation"], *sizes[int(ann["image_id"])])
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        ann.setdefault("iscrowd", 0)
        ann.setdefault("id", i + 1)
        if "area" not in ann:
            if has_segm:
                rle = _to_rle(ann["segmentation"], *sizes[int(ann["image_id"])])
                ann["area"] = float(mask_utils.area(rle))
            else:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    segm_problem = None
    if without_segm == len(data["annotations"]) and without_segm:
        segm_problem = f"{path.name} has no 'segmentation' in its annotations (boxes only)"
    elif without_segm:
        segm_problem = (
            f"{without_segm} of {len(data['annotations'])} annotations in {path.name} "
            "have no 'segmentation'"
        )
    names = {
        int(c["id"]): str(c.get("name", c["id"]))
        for c in sorted(data["categories"], key=lambda c: int(c["id"]))
    }
    return GroundTruth(
        path=path,
        coco=_indexed(data),
        image_ids=[int(im["id"]) for im in data["images"]],
        category_names=names,
        segm_problem=segm_problem,
    )


def resolve_classes(gt: GroundTruth, wanted: Sequence[str]) -> list[int]:
    """`--classes` names or ids -> category ids of the annotation file, in the order given."""
    by_name = {name.lower(): cid for cid, name in gt.category_names.items()}
    out: list[int] = []
    for raw in wanted:
        token = raw.strip()
        if token.lstrip("-").isdigit():
            cid = int(token)
            if cid not in gt.category_names:
                raise MrcnnError(f"--classes: category id {cid} is not in {gt.path.name}")
        elif token.lower() in by_name:
            cid = by_name[token.lower()]
        else:
            close = difflib.get_close_matches(token.lower(), list(by_name), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise MrcnnError(f"--classes: no category named {token!r} in {gt.path.name}{hint}")
        if cid not in out:
            out.append(cid)
    if not out:
        raise MrcnnError("--classes: no class given")
    return out


# ----------------------------------------------------------------------------- results
@dataclass
class CheckedResults:
    """A results list COCOeval can take, and what was dropped from it and why."""

    results: list[dict[str, Any]]
    total: int
    unknown_image_ids: list[int] = field(default_factory=list)
    dropped_unknown_images: int = 0
    unknown_category_ids: list[int] = field(default_factory=list)
    dropped_unknown_categories: int = 0
    segm_problem: str | None = None

    def notes(self) -> list[str]:
        out = []
        if self.dropped_unknown_images:
            out.append(
                f"{self.dropped_unknown_images} predictions are for {len(self.unknown_image_ids)}"
                f" image ids not in the annotations ({_preview(self.unknown_image_ids)}); "
                "ignored"
            )
        if self.dropped_unknown_categories:
            out.append(
                f"{self.dropped_unknown_categories} predictions have category ids unknown to the"
                f" annotations ({_preview(self.unknown_category_ids)}); ignored"
            )
        return out


def _preview(ids: Sequence[int], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:n])
    return shown + (f", ... {len(ids) - n} more" if len(ids) > n else "")


def _to_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """Polygons, uncompressed or compressed RLE -> one compressed RLE (counts as str)."""
    if isinstance(segm, dict) and isinstance(segm.get("counts"), str):
        return segm
    if isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
        return {"size": list(segm["size"]), "counts": segm["counts"].decode()}
    rles = mask_utils.frPyObjects(segm, height, width)
    rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def read_results_file(path: Path | str) -> list[dict[str, Any]]:
    """A COCO results file: a JSON list of detections (a {"annotations": [...]} object too)."""
    path = Path(path)
    data = _read_json(path, "predictions")
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise MrcnnError(f"{path} is not a COCO results file: expected a JSON list of detections")
    for i, entry in enumerate(data):
        problem = _entry_problem(entry)
        if problem:
            raise MrcnnError(f"{path}: detection #{i} {problem}")
    return data


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "is not a JSON object"
    for key in ("image_id", "category_id", "score"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"has no numeric {key!r}"
    bbox = entry.get("bbox")
    if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4):
        return "has a 'bbox' that is not [x, y, width, height]"
    if bbox is None and not _has_segmentation(entry):
        return "has neither 'bbox' nor 'segmentation'"
    return None


def check_results(gt: GroundTruth, results: Sequence[dict[str, Any]]) -> CheckedResults:
    """Keep the detections COCOeval can score against `gt`; say what was dropped.

    Predictions made for another annotation file (no image id matches) or with another
    label numbering (no category id matches, e.g. contiguous 1..80 instead of COCO's
    ids) are refused outright, since every number would be meaningless; a few strays
    are dropped with a note. Masks are converted to compressed RLE where needed, and a
    mask whose size differs from its image disables segm (pycocotools cannot score it).
    """
    images = gt.coco.imgs
    known_cats = gt.category_names
    bad_images: Counter[int] = Counter()
    bad_cats: Counter[int] = Counter()
    kept: list[dict[str, Any]] = []
    without_segm = 0
    wrong_size: list[int] = []
    for entry in results:
        image_id, cat_id = int(entry["image_id"]), int(entry["category_id"])
        if image_id not in images:
            bad_images[image_id] += 1
            continue
        if cat_id not in known_cats:
            bad_cats[cat_id] += 1
            continue
        entry = dict(entry, image_id=image_id, category_id=cat_id, score=float(entry["score"]))
        if _has_segmentation(entry):
            height, width = images[image_id]["height"], images[image_id]["width"]
            try:
                entry["segmentation"] = _to_rle(entry["segmentation"], height, width)
            except (TypeError, ValueError, KeyError) as exc:
                raise MrcnnError(
                    f"a segmentation for image {image_id} is malformed: {exc}"
                ) from None
            if list(entry["segmentation"]["size"]) != [height, width]:
                wrong_size.append(image_id)
            elif "bbox" not in entry:  # loadRes wants every entry alike: give each a box
                entry["bbox"] = [float(v) for v in mask_utils.toBbox(entry["segmentation"])]
        else:
            entry.pop("segmentation", None)
            without_segm += 1
        kept.append(entry)
    if results and len(bad_images) and not kept and not bad_cats:
        raise MrcnnError(
            f"none of the {len(results)} predictions is for an image in {gt.path.name} "
            f"(image ids {_preview(sorted(bad_images))}); were they made for another "
            "annotation file?"
        )
    if results and bad_cats and not kept:
        raise MrcnnError(
            f"no prediction has a category id of {gt.path.name} (got "
            f"{_preview(sorted(bad_cats))}; the file has {_preview(sorted(known_cats))}); "
            "are the labels numbered differently (e.g. 1..80 instead of COCO ids)?"
        )
    segm_problem = None
    if wrong_size:
        segm_problem = (
            f"{len(wrong_size)} predicted masks differ in size from their image "
            f"(first for image {wrong_size[0]})"
        )
    elif without_segm:
        segm_problem = f"{without_segm} of {len(kept)} predictions have no 'segmentation'"
    return CheckedResults(
        results=kept,
        total=len(results),
        unknown_image_ids=sorted(bad_images),
        dropped_unknown_images=sum(bad_images.values()),
        unknown_category_ids=sorted(bad_cats),
        dropped_unknown_categories=sum(bad_cats.values()),
        segm_problem=segm_problem,
    )


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
