"""Mask <-> polygon conversion: exact round trips, holes filled, parts kept apart."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from mrcnn_cli.writers.polygons import join_polygons, mask_to_polygons, polygons_to_mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Reference hole filling, independent of contours: flood the outside from a border."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)  # 4-connected background reachable from outside
    holes = flood == 0
    return (padded.astype(bool) | holes)[1:-1, 1:-1]


def shape_masks() -> dict[str, np.ndarray]:
    h, w = 90, 120
    out = {}
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (40, 45), 30, 1, -1)
    out["circle"] = m
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (60, 45), (50, 20), 30, 0, 360, 1, -1)
    out["rotated ellipse"] = m
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.array([[5, 80], [60, 3], [115, 85]], np.int32)], 1)
    out["triangle"] = m
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.array([[10, 10], [100, 10], [100, 30], [30, 30], [30, 80], [10, 80]])], 1)
    out["concave L"] = m
    m = np.zeros((h, w), np.uint8)
    cv2.line(m, (5, 5), (110, 70), 1, 3)
    out["thick diagonal line"] = m
    return {name: mask.astype(bool) for name, mask in out.items()}


@pytest.fixture(scope="module")
def coco_masks(coco_ann: Path) -> list[np.ndarray]:
    """Every non-crowd instance of the shared COCO images, rasterised by pycocotools."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_ann))
    anns = [a for a in coco.dataset["annotations"] if not a["iscrowd"]]
    return [coco.annToMask(a).astype(bool) for a in anns]


@pytest.mark.parametrize("name", list(shape_masks()))
def test_a_filled_shape_round_trips_exactly(name: str) -> None:
    mask = shape_masks()[name]
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    np.testing.assert_array_equal(polygons_to_mask(polygons, *mask.shape), mask)


def specks(mask: np.ndarray) -> np.ndarray:
    """Pixels of 8-connected parts too thin for a polygon (here: dots of 1-2 pixels)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    tiny = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= 2)
    return np.isin(labels, tiny[tiny > 0])


def test_real_coco_masks_round_trip_to_themselves_with_holes_filled(
    coco_masks: list[np.ndarray],
) -> None:
    """Exact, except stray one-pixel specks (two masks here have one), which are dropped."""
    assert len(coco_masks) == 346
    for mask in coco_masks:
        back = polygons_to_mask(mask_to_polygons(mask), *mask.shape)
        np.testing.assert_array_equal(back, fill_holes(mask) & ~specks(mask))


def test_real_coco_masks_lose_at_most_their_holes(coco_masks: list[np.ndarray]) -> None:
    """IoU = 1 - hole share; the worst COCO mask here has holes worth 4% of it (0.959)."""
    ious = [iou(m, polygons_to_mask(mask_to_polygons(m), *m.shape)) for m in coco_masks]
    assert min(ious) >= 0.95
    assert np.mean(ious) >= 0.999


@pytest.mark.parametrize(("epsilon", "bound"), [(0.5, 0.98), (1.0, 0.94)])
def test_simplified_polygons_keep_iou_on_medium_and_large_masks(
    coco_masks: list[np.ndarray], epsilon: float, bound: float
) -> None:
    """approxPolyDP moves the outline by <= epsilon px, a fixed band around the edge.

    That band is a large share of a tiny mask, so the bound is stated for masks of at
    least 32x32 px (COCO medium and large); measured minima 0.987 and 0.943.
    """
    for mask in coco_masks:
        if mask.sum() >= 32 * 32:
            back = polygons_to_mask(mask_to_polygons(mask, epsilon=epsilon), *mask.shape)
            assert iou(mask, back) >= bound


def test_simplification_reduces_the_number_of_points(coco_masks: list[np.ndarray]) -> None:
    exact = sum(len(p) for m in coco_masks for p in mask_to_polygons(m))
    simple = sum(len(p) for m in coco_masks for p in mask_to_polygons(m, epsilon=0.5))
    assert simple < 0.6 * exact


def test_a_ring_is_written_as_its_filled_outer_outline() -> None:
    ring = np.zeros((60, 60), np.uint8)
    cv2.circle(ring, (30, 30), 25, 1, -1)
    cv2.circle(ring, (30, 30), 10, 0, -1)
    polygons = mask_to_polygons(ring.astype(bool))
    assert len(polygons) == 1
    disc = np.zeros((60, 60), np.uint8)
    cv2.circle(disc, (30, 30), 25, 1, -1)
    np.testing.assert_array_equal(polygons_to_mask(polygons, 60, 60), disc.astype(bool))


def test_each_part_is_a_separate_polygon_largest_first() -> None:
    mask = np.zeros((40, 60), bool)
    mask[2:6, 2:6] = True  # small part, first in scan order
    mask[10:35, 20:55] = True  # large part
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    small_first = polygons_to_mask([polygons[1]], 40, 60)
    assert small_first[2:6, 2:6].all() and small_first.sum() == 16
    np.testing.assert_array_equal(polygons_to_mask(polygons, 40, 60), mask)


def test_an_empty_mask_has_no_polygons() -> None:
    assert mask_to_polygons(np.zeros((20, 30), bool)) == []


def test_a_mask_touching_the_image_border_round_trips() -> None:
    mask = np.zeros((30, 40), bool)
    mask[:, :12] = True  # touches top, left and bottom edges
    mask[20:, 30:] = True  # the bottom-right corner
    back = polygons_to_mask(mask_to_polygons(mask), 30, 40)
    np.testing.assert_array_equal(back, mask)


def test_a_full_image_mask_round_trips() -> None:
    mask = np.ones((17, 23), bool)
    np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(mask), 17, 23), mask)


def test_a_one_pixel_mask_has_no_polygon() -> None:
    mask = np.zeros((10, 10), bool)
    mask[4, 7] = True
    assert mask_to_polygons(mask) == []


def test_a_one_pixel_wide_straight_line_has_no_polygon() -> None:
    mask = np.zeros((10, 10), bool)
    mask[4, 2:9] = True
    assert mask_to_polygons(mask) == []


def test_a_two_by_two_block_is_the_smallest_kept_part() -> None:
    mask = np.zeros((10, 10), bool)
    mask[3:5, 6:8] = True
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    np.testing.assert_array_equal(polygons_to_mask(polygons, 10, 10), mask)


def test_stray_pixels_beside_a_real_part_are_dropped() -> None:
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[28, 28] = True
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    assert not polygons_to_mask(polygons, 30, 30)[28, 28]


def test_min_area_drops_small_parts() -> None:
    mask = np.zeros((40, 40), bool)
    mask[2:5, 2:5] = True  # polygon area 4 (pixel-centre outline 2 x 2)
    mask[10:30, 10:30] = True
    assert len(mask_to_polygons(mask, min_area=4)) == 1
    assert len(mask_to_polygons(mask, min_area=3.9)) == 2


def test_vertices_are_integer_pixel_centres_of_the_boundary() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True
    (polygon,) = mask_to_polygons(mask)
    assert polygon.dtype == np.int32
    assert sorted(map(tuple, polygon.tolist())) == [(3, 2), (3, 5), (7, 2), (7, 5)]


def test_overlapping_polygons_fill_as_a_union() -> None:
    a = np.array([[0, 0], [4, 0], [4, 4], [0, 4]])
    b = np.array([[2, 2], [5, 2], [5, 5], [2, 5]])
    mask = polygons_to_mask([a, b], 6, 6)
    assert mask[3, 3], "the overlap must not become a hole"
    assert mask.sum() == 25 + 16 - 9


def test_float_vertices_are_rounded_to_the_nearest_pixel() -> None:
    square = np.array([[1.4, 1.4], [3.6, 1.4], [3.6, 3.6], [1.4, 3.6]])
    mask = polygons_to_mask([square], 6, 6)
    assert mask[1:5, 1:5].all() and mask.sum() == 16


def test_joining_one_polygon_returns_it_unchanged() -> None:
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], np.int32)
    np.testing.assert_array_equal(join_polygons([square]), square)


def test_a_joined_polygon_covers_every_part_plus_thin_bridges() -> None:
    mask = np.zeros((60, 80), bool)
    mask[5:20, 5:20] = True
    mask[30:55, 40:75] = True
    mask[5:12, 60:70] = True
    parts = mask_to_polygons(mask)
    joined = join_polygons(parts)
    back = polygons_to_mask([joined], 60, 80)
    assert (back & mask).sum() == mask.sum(), "every part is covered"
    extra = back & ~mask
    assert 0 < extra.sum() < 60, "only the one-pixel bridges are added"
    for part in parts:
        assert {tuple(p) for p in part.tolist()} <= {tuple(p) for p in joined.tolist()}


def test_joining_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="no polygons"):
        join_polygons([])


@pytest.mark.parametrize(
    "pixels",
    [
        [(3, 4)],  # a single pixel
        [(y, x) for y in range(2, 9) for x in range(2, 9) if x <= y],  # a staircase
        [(y, 5) for y in range(1, 10)] + [(9, x) for x in range(5, 12)],  # an L, 1 px wide
        [(y, x) for y in range(12) for x in range(14) if (x // 2 + y // 3) % 2],  # holes
    ],
)
def test_pixel_edge_polygons_fill_back_to_the_mask_with_pycocotools(pixels):
    """COCO polygons (continuous coordinates) give back the mask with its holes filled."""
    from pycocotools import mask as mask_utils

    from mrcnn_cli.writers.polygons import pixel_edge_polygons

    mask = np.zeros((12, 14), bool)
    for y, x in pixels:
        mask[y, x] = True
    filled = np.zeros_like(mask)
    for part in pixel_edge_polygons(mask):
        rle = mask_utils.frPyObjects([part.reshape(-1).tolist()], 12, 14)
        filled |= mask_utils.decode(rle)[..., 0].astype(bool)
    outside = np.pad((~mask).astype(np.uint8), 1, constant_values=1)
    cv2.floodFill(outside, None, (0, 0), 2)  # the background that reaches the border
    assert (filled == (outside[1:-1, 1:-1] != 2)).all()
