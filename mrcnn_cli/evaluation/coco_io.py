"""Reading COCO files: one JSON reader, one validator, and the checks COCOeval needs.

pycocotools is strict and terse: a result for an unknown image is a bare AssertionError,
an empty results list an IndexError, a mask of the wrong size a crash deep in C. The
loaders here turn each of those into either a one-line `MrcnnError` or a note that the
report shows, so that COCOeval itself only ever sees input it can score. `segment --ann`
and `train` read their annotation files through the same functions.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn_cli.coco_file import read_coco_instances, read_json
from mrcnn_cli.errors import MrcnnError


def indexed_coco(dataset: dict[str, Any]) -> COCO:
    """A COCO index over a dict, built without pycocotools' prints (the dict is not copied)."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def quiet_coco(gt: dict[str, Any]) -> COCO:
    """Build a COCO index from a (copied) dict without pycocotools' prints."""
    return indexed_coco(copy.deepcopy(gt))


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


def _has_segmentation(ann: dict[str, Any]) -> bool:
    segm = ann.get("segmentation")
    return isinstance(segm, dict) or (isinstance(segm, list) and len(segm) > 0)


def load_ground_truth(path: Path | str) -> GroundTruth:
    """Read and index a COCO instances file, filling the fields COCOeval needs.

    Hand-made annotation files often lack `iscrowd` or `area`; COCOeval crashes on
    either, so they are filled (0; the mask area, else the box area) rather than refused.
    """
    path = Path(path)
    data = read_coco_instances(path)
    for entry in data["images"]:
        if not {"height", "width"} <= entry.keys():
            raise MrcnnError(f"{path}: image {entry['id']} lacks 'height' or 'width'")
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in data["images"]}
    without_segm = 0
    for i, ann in enumerate(data["annotations"]):
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
        coco=indexed_coco(data),
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
    data = read_json(path, "predictions")
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
