"""Instance crops: RGBA cut-outs of each box with the mask as alpha; stale ones removed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.crops import crop_window, crops_folder, instance_crop, write_crops

CLASS_NAMES = ("__background__", "person", "traffic light")
CATEGORY_IDS = (0, 1, 10)
H, W = 40, 60


def gradient_image() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.dstack([xx * 4, yy * 6, (xx + yy) % 256]).astype(np.uint8)


def two_dets() -> Detections:
    masks = np.zeros((2, H, W), bool)
    masks[0, 5:15, 10:30] = True
    masks[0, 5:8, 10:14] = False  # a notch so alpha is not just the box
    masks[1, 20:38, 40:55] = True
    boxes = [[10.0, 5.0, 30.0, 15.0], [39.6, 19.2, 55.0, 38.0]]
    return Detections(boxes, [0.9, 0.8], [1, 2], masks, CLASS_NAMES, CATEGORY_IDS)


def read_rgba(path: Path) -> np.ndarray:
    bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgra is not None and bgra.shape[2] == 4
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)


def test_each_instance_is_written_as_k_class_png_in_a_folder_per_image(tmp_path: Path) -> None:
    paths = write_crops(tmp_path, "day/img.jpg", gradient_image(), two_dets())
    folder = tmp_path / "crops" / "day" / "img"
    assert paths == [folder / "001_person.png", folder / "002_traffic-light.png"]
    assert crops_folder(tmp_path, "day/img.jpg") == folder


def test_a_crop_is_the_image_inside_the_box_with_the_mask_as_alpha(tmp_path: Path) -> None:
    image, dets = gradient_image(), two_dets()
    path = write_crops(tmp_path, "img.png", image, dets)[0]
    rgba = read_rgba(path)
    assert rgba.shape == (10, 20, 4)
    np.testing.assert_array_equal(rgba[..., :3], image[5:15, 10:30])
    np.testing.assert_array_equal(rgba[..., 3], dets.masks[0, 5:15, 10:30] * 255)  # type: ignore[index]


def test_fractional_boxes_grow_to_whole_pixels() -> None:
    rows, cols = crop_window(np.array([39.6, 19.2, 54.1, 37.01]), H, W)
    assert (rows, cols) == (slice(19, 38), slice(39, 55))


def test_boxes_are_clipped_to_the_image() -> None:
    rows, cols = crop_window(np.array([-5.0, -3.0, 70.0, 45.0]), H, W)
    assert (rows, cols) == (slice(0, H), slice(0, W))


def test_a_degenerate_box_still_gives_one_pixel() -> None:
    rows, cols = crop_window(np.array([60.0, 40.0, 60.0, 40.0]), H, W)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (1, 1)


def test_without_masks_the_whole_box_is_opaque() -> None:
    crop = instance_crop(gradient_image(), np.array([10.0, 5.0, 30.0, 15.0]))
    assert crop.shape == (10, 20, 4) and (crop[..., 3] == 255).all()


def test_crops_of_an_earlier_run_with_more_instances_are_removed(tmp_path: Path) -> None:
    folder = crops_folder(tmp_path, "img.jpg")
    folder.mkdir(parents=True)
    (folder / "003_person.png").write_bytes(b"old")
    (folder / "notes.txt").write_text("not ours")
    write_crops(tmp_path, "img.jpg", gradient_image(), two_dets())
    assert sorted(p.name for p in folder.iterdir()) == [
        "001_person.png",
        "002_traffic-light.png",
        "notes.txt",
    ]


def test_no_detections_write_nothing_and_clear_old_crops(tmp_path: Path) -> None:
    write_crops(tmp_path, "img.jpg", gradient_image(), two_dets())
    empty = Detections.empty(H, W, CLASS_NAMES, CATEGORY_IDS)
    assert write_crops(tmp_path, "img.jpg", gradient_image(), empty) == []
    assert list(crops_folder(tmp_path, "img.jpg").iterdir()) == []


def test_a_non_rgb_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RGB"):
        write_crops(tmp_path, "i.jpg", np.zeros((H, W), np.uint8), two_dets())


def test_masks_of_another_size_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="masks are"):
        write_crops(tmp_path, "i.jpg", np.zeros((H + 1, W, 3), np.uint8), two_dets())
