"""A model's real classes: its label slots minus `__background__` (0) and `N/A` gaps.

torchvision's COCO list keeps background at index 0 and 'N/A' where COCO skipped an id.
Formats that number classes themselves (YOLO-seg) or declare them (CVAT) list only the
real ones, in model order, so class k of such a file is the k-th real class.
"""

from __future__ import annotations

from collections.abc import Sequence


def real_labels(class_names: Sequence[str]) -> list[int]:
    """Model label indices of the real classes, ascending (the rule `--classes` uses)."""
    return [i for i, name in enumerate(class_names) if i > 0 and name != "N/A"]


def real_class_names(class_names: Sequence[str]) -> list[str]:
    return [class_names[i] for i in real_labels(class_names)]


def dense_class_index(class_names: Sequence[str]) -> dict[int, int]:
    """Model label index -> position among the real classes (0-based)."""
    return {label: k for k, label in enumerate(real_labels(class_names))}
