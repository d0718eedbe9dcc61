"""A COCO-format instance dataset as training samples (image tensor + target dict).

Checked up front, so a bad dataset fails in one clear message before any training:
missing image files, annotations pointing at unknown images, no annotations at all.
Crowd regions and degenerate polygons are left out of the targets, as COCO training does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from mrcnn_cli.coco_file import read_coco_instances
from mrcnn_cli.decode import decode_image
from mrcnn_cli.errors import DecodeError, MrcnnError
from mrcnn_cli.train.readers import LabelSet


@dataclass(frozen=True)
class Category:
    id: int
    name: str


def _segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray | None:
    """Polygon list or RLE -> bool mask; None for an empty or degenerate shape."""
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if not polys:
            return None
        rles = mask_utils.frPyObjects(polys, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg, dict) and "counts" in seg:
        rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    else:
        return None
    mask = mask_utils.decode(rle).astype(bool)
    return mask if mask.any() else None


class CocoInstanceDataset:
    """Images and instance targets; labels are 1..K in the order of `categories`.

    From a COCO file (`images_dir`, `ann_path`), or from any format `train/readers.py`
    reads (`from_labels`): both end here, checked the same way.
    """

    def __init__(
        self,
        images_dir: Path | str,
        ann_path: Path | str,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        ann_path = Path(ann_path)
        self.ann_path = ann_path
        if data is None:
            data = read_coco_instances(ann_path)
        self.coco_dict = data  # kept: validation builds its COCO index from it
        if not self.images_dir.is_dir():
            raise MrcnnError(f"images folder not found: {self.images_dir}")
        self.categories = [Category(int(c["id"]), str(c["name"])) for c in data["categories"]]
        if not self.categories:
            raise MrcnnError(f"{ann_path} lists no categories")
        self.label_of = {c.id: i + 1 for i, c in enumerate(self.categories)}
        self.images = sorted(data["images"], key=lambda im: int(im["id"]))
        known = {int(im["id"]) for im in self.images}
        anns = [a for a in data["annotations"]]
        if not anns:
            raise MrcnnError(f"{ann_path} has no annotations: nothing to learn from")
        unknown_images = sorted({int(a["image_id"]) for a in anns} - known)
        if unknown_images:
            raise MrcnnError(
                f"{ann_path}: annotations refer to {len(unknown_images)} image id(s) not in "
                f"'images' (first: {unknown_images[:5]})"
            )
        unknown_cats = sorted({int(a["category_id"]) for a in anns} - set(self.label_of))
        if unknown_cats:
            raise MrcnnError(f"{ann_path}: annotations use unknown category ids {unknown_cats[:5]}")
        missing = [
            im["file_name"]
            for im in self.images
            if not (self.images_dir / im["file_name"]).is_file()
        ]
        if missing:
            raise MrcnnError(
                f"{len(missing)} image file(s) listed in {ann_path} are missing from "
                f"{self.images_dir} (first: {', '.join(missing[:3])})"
            )
        self.anns_by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in known}
        for a in anns:
            self.anns_by_image[int(a["image_id"])].append(a)
        self.skipped_annotations = 0

    @classmethod
    def from_labels(cls, labels: LabelSet) -> CocoInstanceDataset:
        """A dataset from a tool's export read by `train.readers.read_labels`."""
        return cls(labels.images_dir, labels.source, labels.coco)

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("__background__", *(c.name for c in self.categories))

    @property
    def category_ids(self) -> tuple[int, ...]:
        return (0, *(c.id for c in self.categories))

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """Decoded RGB image and its target (boxes xyxy, labels, masks uint8)."""
        info = self.images[index]
        path = self.images_dir / info["file_name"]
        try:
            image = decode_image(path)
        except DecodeError as exc:
            raise MrcnnError(f"{path}: {exc}") from exc
        h, w = image.shape[:2]
        boxes, labels, masks = [], [], []
        for a in self.anns_by_image[int(info["id"])]:
            if a.get("iscrowd", 0):
                continue
            mask = _segmentation_to_mask(a.get("segmentation"), h, w)
            if mask is None:
                self.skipped_annotations += 1
                warnings.warn(
                    f"{path}: annotation {a.get('id')} has an empty or degenerate "
                    "segmentation; skipped",
                    stacklevel=2,
                )
                continue
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(self.label_of[int(a["category_id"])])
            masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)).to(torch.uint8)
            if masks
            else torch.zeros((0, h, w), dtype=torch.uint8),
        }
        return image, target
