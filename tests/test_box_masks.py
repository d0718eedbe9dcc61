"""`BoxMasks`: masks kept inside their boxes read like the full [N, H, W] array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from mrcnn_cli.box_masks import BoxMasks
from mrcnn_cli.detections import Detections, encode_crop_rle, encode_rle
from mrcnn_cli.postprocess import paste_masks


def random_dense(n: int = 6, height: int = 37, width: int = 53, seed: int = 0) -> np.ndarray:
    """Blobs of random size and place, one of them empty, one touching the corner."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, height, width), bool)
    for i in range(1, n):
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > 0.3
    masks[-1, -3:, -4:] = True
    return masks


def test_from_dense_round_trips_exactly():
    dense = random_dense()
    boxed = BoxMasks.from_dense(dense)
    assert boxed.shape == dense.shape
    np.testing.assert_array_equal(np.asarray(boxed), dense)
    for i in range(len(dense)):
        np.testing.assert_array_equal(boxed[i], dense[i])


def test_crops_are_no_larger_than_the_masks_bounds():
    dense = random_dense()
    boxed = BoxMasks.from_dense(dense)
    assert boxed.crops[0].shape == (0, 0)  # the empty mask costs nothing
    assert all(c.size <= dense[0].size for c in boxed.crops)


def test_indexing_with_an_array_gives_the_subset():
    dense = random_dense()
    picked = np.array([4, 1])
    np.testing.assert_array_equal(np.asarray(BoxMasks.from_dense(dense)[picked]), dense[picked])
    keep = dense.any(axis=(1, 2))
    np.testing.assert_array_equal(np.asarray(BoxMasks.from_dense(dense)[keep]), dense[keep])


def test_areas_count_the_pixels():
    dense = random_dense()
    np.testing.assert_array_equal(BoxMasks.from_dense(dense).areas(), dense.sum(axis=(1, 2)))


def test_cut_gives_the_mask_inside_any_window():
    dense = random_dense()
    boxed = BoxMasks.from_dense(dense)
    window = (slice(5, 30), slice(10, 53))
    for i in range(len(dense)):
        np.testing.assert_array_equal(boxed.cut(i, *window), dense[i][window])


def test_a_crop_outside_the_image_is_refused():
    with pytest.raises(ValueError, match="not inside"):
        BoxMasks((np.ones((4, 4), bool),), np.array([[8, 0]]), height=10, width=10)


def test_shifted_places_tile_masks_in_the_whole_image():
    dense = random_dense(height=20, width=30)
    moved = BoxMasks.from_dense(dense).shifted(7, 3, height=40, width=50)
    expected = np.zeros((len(dense), 40, 50), bool)
    expected[:, 3:23, 7:37] = dense
    np.testing.assert_array_equal(np.asarray(moved), expected)


def test_crop_rle_equals_the_full_mask_rle():
    dense = random_dense()
    boxed = BoxMasks.from_dense(dense)
    for i in range(len(dense)):
        crop, x0, y0 = boxed.crop(i)
        assert encode_crop_rle(crop, x0, y0, *dense.shape[1:]) == encode_rle(dense[i])


def test_crop_rle_decodes_to_the_mask():
    dense = random_dense(seed=3)
    boxed = BoxMasks.from_dense(dense)
    crop, x0, y0 = boxed.crop(2)
    rle = encode_crop_rle(crop, x0, y0, *dense.shape[1:])
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), dense[2])


def test_detections_accept_dense_masks_and_keep_them_box_local():
    dense = random_dense()
    dets = Detections(np.zeros((6, 4)), np.ones(6), np.ones(6), dense, ("bg", "a"), (0, 1))
    assert isinstance(dets.masks, BoxMasks)
    np.testing.assert_array_equal(np.asarray(dets[np.array([5, 2])].masks), dense[[5, 2]])


def test_pasted_masks_take_only_their_boxes():
    """100 masks on a 4000x3000 photo: a few MB of crops instead of 1.2 GB of canvas."""
    torch.manual_seed(0)
    corners = torch.rand(100, 2) * torch.tensor([3800.0, 2800.0])
    boxes = torch.cat([corners, corners + 150], dim=1)
    pasted = paste_masks(torch.rand(100, 28, 28), boxes, 3000, 4000)
    assert isinstance(pasted, BoxMasks) and pasted.shape == (100, 3000, 4000)
    assert sum(c.size for c in pasted.crops) <= 100 * 162 * 162
