"""RoIAlign as row gathers gives torchvision's RoIAlign, up to float summation order."""

from __future__ import annotations

import gc
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from mrcnn_cli.models.gather_roi_align import (
    GatherRoIAlign,
    RowsCache,
    gather_roi_align,
    level_rows,
    roi_align_rows,
)
from mrcnn_cli.models.roi_ops import MultiScaleRoIPool, assign_levels
from mrcnn_cli.models.threaded_roi import ThreadedRoIPool, thread_roi_pooling

FP32_ATOL = 1e-5
NAMES = ["0", "1", "2", "3"]


def random_boxes(n: int, width: float, height: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
    wh = torch.rand(n, 2, generator=g) ** 3 * torch.tensor([width, height]) + 0.1
    boxes = torch.cat([xy, xy + wh], dim=1)
    return torch.minimum(boxes, torch.tensor([width, height, width, height]))


def edge_boxes(width: float, height: float) -> torch.Tensor:
    """The whole image, its corners, a point, boxes past the border, tiny and thin ones."""
    return torch.tensor(
        [
            [0, 0, width, height],
            [width - 3, height - 3, width, height],
            [0, 0, 1, 1],
            [50, 50, 50, 50],
            [-8, -8, 4, 4],
            [width - 4, height - 4, width + 8, height + 8],
            [10, 20, 10.5, 90],
            [3.3, 7.7, 200.1, 9.2],
        ]
    )


def pyramid(batch: int, height: int, width: int, seed: int) -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (name, torch.randn(batch, 16, height // 2**k, width // 2**k, generator=g))
        for k, name in zip(range(2, 6), NAMES)
    )


@pytest.mark.parametrize("out", [7, 14])
def test_one_level_equals_torchvision_roi_align(out):
    g = torch.Generator().manual_seed(out)
    feature = torch.randn(2, 16, 50, 76, generator=g)
    boxes = torch.cat([random_boxes(300, 304, 200, seed=out), edge_boxes(304, 200)])
    rois = torch.cat([torch.randint(0, 2, (len(boxes), 1), generator=g).float(), boxes], dim=1)
    expected = roi_align(feature, rois, out, 0.25, 2, aligned=False)
    got = roi_align_rows(level_rows(feature, torch.float32), rois, (50, 76), 0.25, 2, out)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("grid", [1, 3, 4])
def test_other_sampling_grids_equal_torchvision(grid):
    feature = torch.randn(1, 8, 40, 40, generator=torch.Generator().manual_seed(grid))
    boxes = torch.cat([random_boxes(60, 160, 160, seed=3), edge_boxes(160, 160)])
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
    expected = roi_align(feature, rois, 5, 0.25, grid, aligned=False)
    got = roi_align_rows(level_rows(feature, torch.float32), rois, (40, 40), 0.25, grid, 5)
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=0)


def test_the_pyramid_equals_multiscale_roi_align_for_images_of_two_sizes():
    features = pyramid(2, 256, 320, seed=0)
    shapes = [(256, 320), (200, 256)]
    boundary = torch.tensor([[0, 0, 112, 112], [10, 10, 234, 234], [0, 0, 224, 224.0]])
    boxes = [
        torch.cat([random_boxes(400, 320, 256, seed=1), edge_boxes(320, 256), boundary]),
        random_boxes(250, 256, 200, seed=2),
    ]
    reference = MultiScaleRoIAlign(NAMES, 7, sampling_ratio=2)
    expected = reference(features, boxes, shapes)
    got = GatherRoIAlign(reference, RowsCache(torch.float32))(features, boxes, shapes)
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=0)


def test_a_thin_first_image_pools_at_the_right_scales():
    # torchvision infers the scales from the height on its first call and keeps them:
    # warmed on a normal image it is right, and the gathered pooler must be right at once
    reference = MultiScaleRoIAlign(NAMES, 7, sampling_ratio=2)
    reference(pyramid(1, 256, 320, seed=7), [random_boxes(10, 320, 256, seed=7)], [(256, 320)])
    thin = pyramid(1, 64, 1024, seed=8)  # a 40 px tall image padded to 64
    boxes = [random_boxes(200, 1024, 40, seed=8)]
    expected = reference(thin, boxes, [(40, 1024)])
    got = GatherRoIAlign(MultiScaleRoIAlign(NAMES, 7, 2), RowsCache(torch.float32))(
        thin, boxes, [(40, 1024)]
    )
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=0)


def test_boxes_far_outside_the_map_pool_as_torchvision_does():
    feature = torch.randn(1, 8, 40, 40, generator=torch.Generator().manual_seed(11))
    rois = torch.tensor([[0, 10, 10, 1e30, 60], [0, -1e30, 5, 30, 30], [0, 1e6, 1e6, 2e6, 2e6]])
    expected = roi_align(feature, rois, 7, 0.25, 2, aligned=False)
    got = roi_align_rows(level_rows(feature, torch.float32), rois, (40, 40), 0.25, 2, 7)
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=0)


def test_bf16_rows_stay_within_bf16_rounding():
    features = pyramid(1, 256, 256, seed=4)
    boxes = [random_boxes(500, 256, 256, seed=5)]
    reference = MultiScaleRoIAlign(NAMES, 7, sampling_ratio=2)
    expected = reference(features, boxes, [(256, 256)])
    got = GatherRoIAlign(reference, RowsCache(torch.bfloat16))(features, boxes, [(256, 256)])
    assert got.dtype == torch.float32
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 2**-7 * scale


def test_no_boxes_pool_to_an_empty_batch():
    features = pyramid(1, 128, 128, seed=6)
    pooler = GatherRoIAlign(MultiScaleRoIAlign(NAMES, 14, 2), RowsCache(torch.float32))
    assert pooler(features, [torch.zeros((0, 4))], [(128, 128)]).shape == (0, 16, 14, 14)


def test_each_feature_map_is_laid_out_once_and_dropped_with_it():
    cache = RowsCache(torch.float32)
    feature = torch.randn(1, 4, 8, 8)
    assert cache(feature) is cache(feature)
    del feature
    gc.collect()
    assert not cache._rows
    other = torch.ones(1, 4, 8, 8)  # may well reuse the freed tensor's id
    assert torch.equal(cache(other), torch.ones(64, 4))


def test_only_fixed_grid_roi_align_poolers_are_swapped_and_threads_leave_them_alone():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    heads = model.roi_heads
    heads.mask_roi_pool = MultiScaleRoIPool(NAMES, 14)
    gather_roi_align(heads)
    thread_roi_pooling(model, threads=2)
    assert isinstance(heads.box_roi_pool, GatherRoIAlign)
    assert isinstance(heads.mask_roi_pool, ThreadedRoIPool)


def test_a_single_level_pooler_is_not_swapped():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    model.roi_heads.box_roi_pool = MultiScaleRoIAlign(["0"], 7, sampling_ratio=2)
    gather_roi_align(model.roi_heads)
    assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign)


def test_an_adaptive_sampling_grid_is_not_swapped():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    model.roi_heads.box_roi_pool = MultiScaleRoIAlign(NAMES, 7, sampling_ratio=0)
    gather_roi_align(model.roi_heads)
    assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIAlign)


def test_boxes_go_to_torchvisions_fpn_levels_even_on_a_boundary():
    from torchvision.ops.poolers import initLevelMapper

    sides = torch.tensor([1.0, 56, 111.99, 112, 224, 448, 449, 2000])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], dim=1)
    boxes = torch.cat([boxes, random_boxes(500, 1333, 800, seed=9)])
    expected = initLevelMapper(2, 5)([boxes])
    assert torch.equal(assign_levels([boxes], 2, 5, 224, 4), expected)
