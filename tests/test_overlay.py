"""Overlay drawing: same size, tinted masks, class colours, labels inside the image."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pytest

from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.overlay import (
    OverlayStyle,
    annotate,
    class_color,
    label_strip_size,
    label_text,
    overlay_path,
    place_labels,
    write_overlay,
)

CLASS_NAMES = ("__background__", "person", "car")
CATEGORY_IDS = (0, 1, 3)
MASKS_ONLY = OverlayStyle(show_boxes=False, show_labels=False)
LABELS_ONLY = OverlayStyle(show_boxes=False, show_masks=False)


def one_det(h: int, w: int, box: tuple[int, int, int, int], label: int = 1) -> Detections:
    x1, y1, x2, y2 = box
    mask = np.zeros((1, h, w), bool)
    mask[0, y1:y2, x1:x2] = True
    return Detections([box], [0.93], [label], mask, CLASS_NAMES, CATEGORY_IDS)


def gray(h: int, w: int, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_annotate_returns_a_new_image_of_the_same_size() -> None:
    image = gray(60, 80)
    out = annotate(image, one_det(60, 80, (10, 20, 40, 50)))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 100).all(), "input must not be drawn on"
    assert not np.array_equal(out, image)


def test_mask_pixels_are_blended_with_the_class_colour() -> None:
    out = annotate(gray(60, 80), one_det(60, 80, (10, 20, 40, 50)), MASKS_ONLY)
    expected = np.round(0.5 * 100 + 0.5 * np.array(class_color(1)))
    np.testing.assert_allclose(out[35, 25], expected, atol=1)


def test_pixels_away_from_every_instance_and_its_label_are_unchanged() -> None:
    # Where the label strip goes depends on the font's metrics, so the test asks the
    # overlay's own layout for it instead of assuming a text width.
    style = OverlayStyle(line_width=2, font_scale=0.4)
    box = (10, 20, 40, 50)
    out = annotate(gray(60, 80), one_det(60, 80, box), style)
    size = label_strip_size(label_text("person", 0.93), 0.4, max(1, round(0.4 * 1.5)))
    ((left, top, w, h),) = place_labels([box], [size], 60, 80)
    drawn = np.zeros((60, 80), bool)
    drawn[box[1] - 2 : box[3] + 3, box[0] - 2 : box[2] + 3] = True  # box and its outline
    drawn[top : top + h, left : left + w] = True
    assert (out[~drawn] == 100).all()
    assert not (out[drawn] == 100).all()


def test_a_class_gets_the_same_colour_in_every_image() -> None:
    a = annotate(gray(60, 80), one_det(60, 80, (10, 20, 40, 50), label=2), MASKS_ONLY)
    b = annotate(gray(90, 50), one_det(90, 50, (0, 0, 30, 30), label=2), MASKS_ONLY)
    np.testing.assert_array_equal(a[35, 25], b[15, 15])


def test_different_classes_get_different_colours() -> None:
    assert class_color(1) != class_color(2)


def test_nothing_is_drawn_when_everything_is_switched_off() -> None:
    style = OverlayStyle(show_boxes=False, show_labels=False, show_masks=False)
    image = gray(60, 80)
    np.testing.assert_array_equal(annotate(image, one_det(60, 80, (10, 20, 40, 50)), style), image)


def test_box_outline_is_drawn_in_the_class_colour() -> None:
    style = OverlayStyle(show_labels=False, show_masks=False, line_width=1)
    out = annotate(gray(60, 80), one_det(60, 80, (10, 20, 40, 50)), style)
    assert tuple(out[20, 25]) == class_color(1)
    assert tuple(out[35, 25]) == (100, 100, 100)


def test_label_of_a_box_at_the_top_edge_is_drawn_inside_the_image() -> None:
    out = annotate(gray(100, 200), one_det(100, 200, (0, 0, 50, 50)), LABELS_ONLY)
    assert tuple(out[0, 0]) == class_color(1)


def test_label_of_a_box_at_the_right_edge_is_shifted_into_the_image() -> None:
    out = annotate(gray(100, 200), one_det(100, 200, (190, 60, 199, 90)), LABELS_ONLY)
    assert tuple(out[58, 199]) == class_color(1)


def test_empty_detections_leave_the_image_as_is() -> None:
    image = gray(30, 40)
    dets = Detections.empty(30, 40, CLASS_NAMES, CATEGORY_IDS)
    np.testing.assert_array_equal(annotate(image, dets), image)


def test_masks_of_another_size_are_refused() -> None:
    with pytest.raises(ValueError, match="masks are"):
        annotate(gray(30, 40), one_det(60, 80, (10, 20, 40, 50)))


def test_non_rgb_input_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB"):
        annotate(np.zeros((30, 40), np.uint8), Detections.empty(30, 40, CLASS_NAMES, CATEGORY_IDS))


def test_overlay_path_mirrors_the_input_tree_with_a_jpg_suffix(tmp_path: Path) -> None:
    path = overlay_path(tmp_path, PurePosixPath("sub/dir/img.png"))
    assert path == tmp_path / "overlays" / "sub" / "dir" / "img.jpg"


def test_write_overlay_writes_an_rgb_correct_jpeg(tmp_path: Path) -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[..., 0] = 255  # pure red in RGB
    path = tmp_path / "overlays" / "red.jpg"
    dets = Detections.empty(40, 60, CLASS_NAMES, CATEGORY_IDS)
    write_overlay(path, image, dets)
    bgr = cv2.imread(str(path))
    assert bgr.shape == (40, 60, 3)
    b, g, r = bgr[20, 30]
    assert r > 240 and g < 15 and b < 15
    assert [p.name for p in path.parent.iterdir()] == ["red.jpg"], "no temp file left behind"


# ----------------------------------------------------------------------------- label placement
def strips_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    (al, at, aw, ah), (bl, bt, bw, bh) = a, b
    return al < bl + bw and bl < al + aw and at < bt + bh and bt < at + ah


def test_labels_of_two_overlapping_boxes_get_strips_that_do_not_overlap() -> None:
    boxes = [(40, 50, 120, 120), (45, 52, 125, 118)]
    first, second = place_labels(boxes, [(70, 16), (70, 16)], 200, 300)
    assert not strips_overlap(first, second)


def test_the_first_label_keeps_the_place_above_its_box() -> None:
    (strip,) = place_labels([(40, 50, 120, 120)], [(70, 16)], 200, 300)
    assert strip == (40, 34, 70, 16)


def test_a_crowded_label_moves_inside_then_below_its_box() -> None:
    box = (40, 50, 120, 120)
    strips = place_labels([box, box, box], [(70, 16)] * 3, 200, 300)
    assert [s[1] for s in strips] == [34, 50, 121], "above, inside the top edge, below"
    assert {s[0] for s in strips} == {40}


def test_every_placed_label_lies_inside_the_image() -> None:
    boxes = [(0, 0, 30, 20), (180, 90, 199, 99), (5, 80, 60, 99), (150, 0, 199, 10)]
    for left, top, w, h in place_labels(boxes, [(60, 14)] * 4, 100, 200):
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 100


def test_with_no_clear_spot_a_label_goes_to_its_natural_place() -> None:
    box = (10, 10, 40, 30)
    strips = place_labels([box] * 10, [(30, 10)] * 10, 40, 50)
    assert strips[-1] == (10, 0, 30, 10), "above the box, clamped into the image"


def test_many_labels_are_placed_quickly() -> None:
    import time

    rng = np.random.default_rng(0)
    xy = rng.integers(0, 900, size=(300, 2))
    boxes = [(int(x), int(y), int(x) + 60, int(y) + 40) for x, y in xy]
    start = time.perf_counter()
    place_labels(boxes, [(80, 18)] * 300, 1000, 1000)
    assert time.perf_counter() - start < 1.0  # measured ~0.02 s; generous for a busy CPU


def test_two_overlapping_detections_show_both_labels_in_full() -> None:
    h, w = 120, 200
    masks = np.zeros((2, h, w), bool)
    masks[0, 50:100, 40:120] = True
    masks[1, 52:98, 44:124] = True
    boxes = [[40, 50, 120, 100], [44, 52, 124, 98]]
    dets = Detections(boxes, [0.9, 0.8], [1, 2], masks, CLASS_NAMES, CATEGORY_IDS)
    together = annotate(gray(h, w), dets, LABELS_ONLY)
    for k, label in enumerate((1, 2)):
        alone = annotate(gray(h, w), dets[np.array([k])], LABELS_ONLY)
        shown = np.all(together == class_color(label), axis=-1).sum()
        full = np.all(alone == class_color(label), axis=-1).sum()
        assert shown == full, f"label {label}'s strip is partly covered"
