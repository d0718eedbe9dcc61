"""`Detections`: the one currency between the model, post-processing and the writers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Instances found in one image, in the image's own pixel coordinates.

    boxes: float32 [N, 4] xyxy; scores: float32 [N]; labels: int64 [N] model label
    indices (index into `class_names`); masks: bool [N, H, W] or None;
    class_names / category_ids: per label index (category_ids are COCO ids).
    Filter with a boolean or integer index: `dets[dets.scores > 0.5]`.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]

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
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.ndim != 3 or len(self.masks) != n:
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
        )

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels]

    @property
    def coco_category_ids(self) -> list[int]:
        return [int(self.category_ids[i]) for i in self.labels]

    @classmethod
    def empty(
        cls, height: int, width: int, class_names: tuple[str, ...], category_ids: tuple[int, ...]
    ) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            labels=np.zeros(0, np.int64),
            masks=np.zeros((0, height, width), bool),
            class_names=class_names,
            category_ids=category_ids,
        )


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, 2:] -= out[:, :2]
    return out
