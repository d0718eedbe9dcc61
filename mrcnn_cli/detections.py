"""`Detections`: the one currency between the model, post-processing and the writers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_cli.box_masks import BoxMasks
from mrcnn_cli.names import display_name


@dataclass
class Detections:
    """Instances found in one image, in the image's own pixel coordinates.

    boxes: float32 [N, 4] xyxy; scores: float32 [N]; labels: int64 [N] model label
    indices (index into `class_names`); masks: `BoxMasks` (each mask kept inside its
    box; pass a bool [N, H, W] array and it is cut to boxes) or None;
    class_names / category_ids: per label index (category_ids are COCO ids);
    track_ids: int64 [N] or None, set by a `Tracker` (-1: not (yet) a confirmed track).
    Filter with a boolean or integer index: `dets[dets.scores > 0.5]`.

    >>> people = dets[np.array(dets.names) == "person"]
    >>> results = people.to_coco(image_id=42)   # what `--save coco` writes for it
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: BoxMasks | None
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    track_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.labels) != n:
            raise ValueError(
                f"boxes, scores, labels disagree in length: {n}, {len(self.scores)}, "
                f"{len(self.labels)}"
            )
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            if len(self.track_ids) != n:
                raise ValueError(f"track_ids must have {n} entries, got {len(self.track_ids)}")
        if self.masks is not None:
            if not isinstance(self.masks, BoxMasks):
                dense = np.asarray(self.masks, dtype=bool)
                if dense.ndim != 3:
                    raise ValueError(f"masks must be [N, H, W] with N={n}, got {dense.shape}")
                self.masks = BoxMasks.from_dense(dense)
            if len(self.masks) != n:
                raise ValueError(f"masks must be [N, H, W] with N={n}, got {self.masks.shape}")

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        return Detections(
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
            class_names=self.class_names,
            category_ids=self.category_ids,
            track_ids=None if self.track_ids is None else self.track_ids[index],
        )

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels]

    @property
    def coco_category_ids(self) -> list[int]:
        return [int(self.category_ids[i]) for i in self.labels]

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results, one per detection in order: bbox xywh (2 decimals), score (5), RLE.

        Exactly the entries `mrcnn segment --save coco` writes for this image; tracked
        detections also carry their "track_id".
        """
        boxes = xyxy_to_xywh(self.boxes)
        category_ids = self.coco_category_ids
        results = []
        for i in range(len(self)):
            entry: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": category_ids[i],
                "bbox": [round(float(v), 2) for v in boxes[i]],
                "score": round(float(self.scores[i]), 5),
            }
            if self.masks is not None:
                crop, x0, y0 = self.masks.crop(i)
                entry["segmentation"] = encode_crop_rle(crop, x0, y0, *self.masks.shape[1:])
            if self.track_ids is not None:
                entry["track_id"] = int(self.track_ids[i])
            results.append(entry)
        return results

    @classmethod
    def from_coco(
        cls,
        results: Iterable[Mapping[str, Any]],
        height: int,
        width: int,
        class_names: tuple[str, ...],
        category_ids: tuple[int, ...],
        with_masks: bool = True,
    ) -> Detections:
        """Back from COCO results of one image (RLE or polygon masks; boxes xywh).

        Category ids are mapped to label indices through `category_ids`; masks are
        decoded at `height` x `width` (entries without a segmentation get an empty mask).
        """
        entries = list(results)
        label_of = {int(c): i for i, c in enumerate(category_ids)}
        boxes = np.array([e["bbox"] for e in entries], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = np.zeros((len(entries), height, width), bool) if with_masks else None
        for i, entry in enumerate(entries):
            if masks is not None and entry.get("segmentation") is not None:
                masks[i] = decode_segmentation(entry["segmentation"], height, width)
        return cls(
            boxes=boxes,
            scores=[float(e["score"]) for e in entries],
            labels=[label_of[int(e["category_id"])] for e in entries],
            masks=masks,
            class_names=class_names,
            category_ids=category_ids,
        )

    @classmethod
    def empty(
        cls, height: int, width: int, class_names: tuple[str, ...], category_ids: tuple[int, ...]
    ) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            labels=np.zeros(0, np.int64),
            masks=BoxMasks.empty(height, width),
            class_names=class_names,
            category_ids=category_ids,
        )


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, 2:] -= out[:, :2]
    return out


def encode_rle(mask: np.ndarray, box: np.ndarray | None = None) -> dict[str, Any]:
    """COCO compressed RLE of a bool [H, W] mask, `counts` as str so it is JSON-ready.

    With the instance's `box` (xyxy), only the band of columns around it is scanned:
    COCO's RLE runs down the columns, so the columns left and right of the object are
    one run of zeros each. The counts are the same as from the whole mask (checked:
    if the mask has pixels outside the band, the whole mask is encoded), and a 12 MP
    image costs what its objects cover instead of 12 MP per instance.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected an [H, W] mask, got shape {mask.shape}")
    height, width = mask.shape
    band = _column_band(mask, box)
    if band is None:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [height, width], "counts": rle["counts"].decode()}
    x0, x1 = band
    return encode_crop_rle(mask[:, x0:x1], x0, 0, height, width)


def encode_crop_rle(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict[str, Any]:
    """COCO compressed RLE of a height x width mask that is zero outside `crop`, whose
    top-left corner is (x0, y0): the same counts as encoding the full mask, at the cost
    of the crop's columns."""
    h, w = crop.shape
    band = crop
    if h != height:  # COCO runs go down whole columns: give the band the image's height
        band = np.zeros((height, w), bool)
        band[y0 : y0 + h] = crop
    runs = _column_major_runs(band)
    runs[0] += x0 * height  # the columns left of the band: zeros
    right = (width - x0 - w) * height  # the columns right of the band: zeros
    if len(runs) % 2:  # the band ends in zeros: they join that run
        runs[-1] += right
    elif right:
        runs.append(right)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode()}


def _column_band(mask: np.ndarray, box: np.ndarray | None) -> tuple[int, int] | None:
    """Columns [x0, x1) around `box` (grown 10% + 2 px) holding every pixel of `mask`,
    or None when there is no box or the mask reaches outside it."""
    if box is None:
        return None
    x_lo, _, x_hi, _ = (float(v) for v in box)
    grow = 0.05 * (x_hi - x_lo) + 2
    x0 = max(int(np.floor(x_lo - grow)), 0)
    x1 = min(int(np.ceil(x_hi + grow)) + 1, mask.shape[1])
    if x1 <= x0 or np.count_nonzero(mask[:, x0:x1]) != np.count_nonzero(mask):
        return None
    return x0, x1


def _column_major_runs(band: np.ndarray) -> list[int]:
    """Run lengths of a bool array read column by column, starting with a run of zeros."""
    flat = np.ascontiguousarray(band.T).reshape(-1)
    if flat.size == 0:
        return [0]
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], starts, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (compressed or uncompressed RLE, or polygons) -> bool [H, W]."""
    if isinstance(segm, dict) and isinstance(segm.get("counts"), str):
        rle = {"size": segm["size"], "counts": segm["counts"].encode()}
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
        rle = segm
    else:
        rles = mask_utils.frPyObjects(segm, height, width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    return mask_utils.decode(rle).astype(bool)


def image_entry(image_id: int, rel: PurePosixPath | str, width: int, height: int) -> dict:
    """An images.json entry; `file_name` is the path relative to the input root (printable
    UTF-8: a name that is not valid UTF-8 shows its odd bytes as `\\xff` escapes)."""
    return {
        "id": int(image_id),
        "file_name": display_name(str(rel)),
        "width": int(width),
        "height": int(height),
    }
