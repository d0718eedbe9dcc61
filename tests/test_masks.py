"""Mask PNG writers: id maps, overlap rule, binary per-instance files."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.masks import (
    instance_id_map,
    read_id_map,
    read_instance_masks,
    semantic_map,
    write_masks,
)

CLASS_NAMES = ("__background__", "person", "traffic light")
CATEGORY_IDS = (0, 1, 10)


def rect_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def make_dets(masks: list[np.ndarray], scores: list[float], labels: list[int]) -> Detections:
    boxes = np.zeros((len(masks), 4), np.float32)
    stacked = np.stack(masks) if masks else np.zeros((0, 8, 8), bool)
    return Detections(boxes, scores, labels, stacked, CLASS_NAMES, CATEGORY_IDS)


def two_overlapping(scores: list[float]) -> Detections:
    """Instance 1 covers columns 0..5, instance 2 columns 3..8; they share columns 3..5."""
    return make_dets([rect_mask(6, 8, 0, 6, 0, 6), rect_mask(6, 8, 0, 6, 3, 8)], scores, [1, 2])


def test_instance_map_numbers_instances_in_detection_order() -> None:
    dets = make_dets([rect_mask(4, 4, 0, 2, 0, 4), rect_mask(4, 4, 2, 4, 0, 4)], [0.9, 0.8], [1, 1])
    id_map = instance_id_map(dets, 4, 4)
    assert id_map.dtype == np.uint16
    assert (id_map[:2] == 1).all() and (id_map[2:] == 2).all()


def test_background_is_zero() -> None:
    dets = make_dets([rect_mask(4, 4, 0, 1, 0, 1)], [0.9], [1])
    id_map = instance_id_map(dets, 4, 4)
    assert id_map[0, 0] == 1 and (id_map.ravel()[1:] == 0).all()


def test_overlap_goes_to_the_higher_scoring_instance_even_if_later() -> None:
    id_map = instance_id_map(two_overlapping([0.4, 0.9]), 6, 8)
    assert (id_map[:, 3:6] == 2).all()
    assert (id_map[:, :3] == 1).all()


def test_overlap_with_equal_scores_goes_to_the_earlier_instance() -> None:
    id_map = instance_id_map(two_overlapping([0.7, 0.7]), 6, 8)
    assert (id_map[:, 3:6] == 1).all()
    assert (id_map[:, 6:] == 2).all()


def test_semantic_map_holds_coco_category_ids() -> None:
    sem = semantic_map(two_overlapping([0.9, 0.5]), 6, 8)
    assert (sem[:, :6] == 1).all()
    assert (sem[:, 6:] == 10).all()


def test_more_than_65535_instances_are_rejected() -> None:
    n = 65536
    dets = Detections(
        np.zeros((n, 4)), np.ones(n), np.ones(n), np.zeros((n, 1, 1), bool),
        CLASS_NAMES, CATEGORY_IDS,
    )  # fmt: skip
    with pytest.raises(ValueError, match="16-bit"):
        instance_id_map(dets, 1, 1)


def test_detections_without_masks_are_rejected() -> None:
    dets = Detections(np.zeros((1, 4)), [0.9], [1], None, CLASS_NAMES, CATEGORY_IDS)
    with pytest.raises(ValueError, match="no masks"):
        instance_id_map(dets, 4, 4)


def test_instance_png_keeps_ids_above_255(tmp_path: Path) -> None:
    n, h, w = 300, 20, 15
    masks = [np.zeros((h, w), bool) for _ in range(n)]
    for k, mask in enumerate(masks):
        mask.flat[k] = True
    dets = make_dets(masks, [0.5] * n, [1] * n)
    (path,) = write_masks(tmp_path, PurePosixPath("a/b.jpg"), dets, h, w, "instance")
    assert path == tmp_path / "masks" / "a" / "b.png"
    id_map = read_id_map(path)
    assert id_map.max() == 300
    np.testing.assert_array_equal(id_map, instance_id_map(dets, h, w))


def test_read_instance_masks_recovers_visible_masks(tmp_path: Path) -> None:
    dets = two_overlapping([0.9, 0.5])
    (path,) = write_masks(tmp_path, "x.png", dets, 6, 8, "instance")
    masks = read_instance_masks(path)
    assert masks.shape == (2, 6, 8)
    np.testing.assert_array_equal(masks[0], dets.masks[0])
    np.testing.assert_array_equal(masks[1], dets.masks[1] & ~dets.masks[0])


def test_no_detections_still_write_an_all_zero_instance_png(tmp_path: Path) -> None:
    dets = Detections.empty(5, 7, CLASS_NAMES, CATEGORY_IDS)
    (path,) = write_masks(tmp_path, "empty.jpg", dets, 5, 7, "instance")
    id_map = read_id_map(path)
    assert id_map.shape == (5, 7) and not id_map.any()


def test_semantic_png_holds_category_ids(tmp_path: Path) -> None:
    (path,) = write_masks(tmp_path, "s.jpg", two_overlapping([0.9, 0.5]), 6, 8, "semantic")
    assert path == tmp_path / "masks" / "s.png"
    assert set(np.unique(read_id_map(path))) == {1, 10}


def test_binary_writes_one_zero_padded_png_per_instance_named_by_class(tmp_path: Path) -> None:
    dets = two_overlapping([0.9, 0.5])
    paths = write_masks(tmp_path, "dir/img.jpg", dets, 6, 8, "binary")
    folder = tmp_path / "masks" / "dir" / "img"
    assert paths == [folder / "001_person.png", folder / "002_traffic-light.png"]
    for path, mask in zip(paths, dets.masks, strict=True):
        png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8
        np.testing.assert_array_equal(png, mask.astype(np.uint8) * 255)


def test_binary_rerun_with_fewer_instances_removes_stale_pngs(tmp_path: Path) -> None:
    write_masks(tmp_path, "img.jpg", two_overlapping([0.9, 0.5]), 6, 8, "binary")
    dets = make_dets([rect_mask(6, 8, 0, 1, 0, 1)], [0.9], [2])
    write_masks(tmp_path, "img.jpg", dets, 6, 8, "binary")
    names = sorted(p.name for p in (tmp_path / "masks" / "img").iterdir())
    assert names == ["001_traffic-light.png"]


def test_path_escaping_the_output_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safe"):
        write_masks(tmp_path, "../evil.jpg", two_overlapping([0.9, 0.5]), 6, 8, "instance")


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown mask format"):
        write_masks(tmp_path, "a.jpg", two_overlapping([0.9, 0.5]), 6, 8, "rle")  # type: ignore[arg-type]
