"""Real classes: label slots minus background and N/A gaps, numbered densely."""

from __future__ import annotations

from mrcnn_cli.writers.classes import dense_class_index, real_class_names, real_labels

COCO_LIKE = ("__background__", "person", "bicycle", "N/A", "car", "N/A", "dog")


def test_background_and_na_slots_are_not_real_classes() -> None:
    assert real_labels(COCO_LIKE) == [1, 2, 4, 6]
    assert real_class_names(COCO_LIKE) == ["person", "bicycle", "car", "dog"]


def test_dense_index_numbers_real_classes_from_zero_in_model_order() -> None:
    assert dense_class_index(COCO_LIKE) == {1: 0, 2: 1, 4: 2, 6: 3}


def test_a_model_with_only_background_has_no_real_classes() -> None:
    assert real_labels(("__background__",)) == []
