"""RoI feature extraction: torchvision's RoIAlign, or quantised RoIPool for comparison.

The Mask R-CNN paper's ablation (RoIPool 26.9 vs RoIAlign 30.3 mask AP) comes from
removing quantisation; `MultiScaleRoIPool` puts it back at the same output sizes and
with the same FPN level assignment, so the two differ in the sampling op alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_pool

from mrcnn_cli.config import ROI_OPS


class MultiScaleRoIPool(nn.Module):
    """FPN-level RoI max pooling with coordinates rounded to the feature grid."""

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]

        def pool(feature: Tensor, rois: Tensor, scale: float) -> Tensor:
            return roi_pool(feature, rois, self.output_size, spatial_scale=scale)

        scales = level_scales(features, image_shapes)
        return pool_by_level(features, boxes, scales, self.output_size, pool,
                             self.canonical_scale, self.canonical_level)  # fmt: skip


def pool_by_level(
    features: list[Tensor],
    boxes: list[Tensor],
    scales: list[float],
    output_size: tuple[int, int],
    pool: Callable[[Tensor, Tensor, float], Tensor],
    canonical_scale: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """The multi-scale part of an FPN RoI pooler: each box goes to its level and
    `pool(level feature, its rois [k, 5], level scale)` pools it; rows come back in the
    order of `boxes` (torchvision's `_multiscale_roi_align`, with the op passed in)."""
    k_min, k_max = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
    rois = boxes_to_rois(boxes)
    result = features[0].new_zeros((rois.shape[0], features[0].shape[1], *output_size))
    if rois.shape[0] == 0:
        return result
    levels = assign_levels(boxes, k_min, k_max, canonical_scale, canonical_level)
    for level, (feature, scale) in enumerate(zip(features, scales)):
        idx = torch.where(levels == level)[0]
        if idx.numel():
            result[idx] = pool(feature, rois[idx], scale).to(result.dtype)
    return result


def level_scales(features: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """Each FPN level's scale (1/4 ... 1/32): its size against the largest image's, the
    power of two nearest. Measured along the longer side: torchvision's `_setup_scales`
    uses the height, which is off by 2x once padding grows the height by over 1.4x (an
    image under ~77 px tall after resizing); torchvision hides that by keeping the
    scales of its first call, so its answer depends on which image came first."""
    max_h = max(s[0] for s in image_shapes)
    max_w = max(s[1] for s in image_shapes)
    axis, extent = (-2, max_h) if max_h >= max_w else (-1, max_w)
    return [_level_scale(int(f.shape[axis]), extent) for f in features]


def assign_levels(
    boxes: list[Tensor], k_min: int, k_max: int, canonical_scale: int, canonical_level: int
) -> Tensor:
    """Each box's FPN level (0 = the first level): eq. 1 of the FPN paper, computed with
    the same tensor ops as torchvision's LevelMapper so that boxes on a boundary agree."""
    all_boxes = torch.cat(boxes)
    area = (all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1])
    s = torch.sqrt(area)
    eps = torch.tensor(1e-6, dtype=s.dtype)
    k = torch.floor(canonical_level + torch.log2(s / canonical_scale) + eps)
    k = torch.clamp(k, min=k_min, max=k_max)
    return k.to(torch.int64) - k_min


def _level_scale(feature_size: int, image_size: int) -> float:
    approx = float(feature_size) / float(image_size)
    return 2.0 ** float(torch.tensor(approx).log2().round())


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image boxes -> one [K, 5] tensor of (image index, x1, y1, x2, y2)."""
    ids = [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(ids), torch.cat(boxes)], dim=1)


def make_roi_op(roi_op: str, featmap_names: list[str], output_size: int) -> nn.Module:
    if roi_op == "align":
        return MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio=2)
    if roi_op == "pool":
        return MultiScaleRoIPool(featmap_names, output_size)
    raise ValueError(f"unknown RoI op {roi_op!r}; choose one of {', '.join(ROI_OPS)}")


def output_side(pooler: nn.Module) -> int:
    """A square RoI pooler's output side (torchvision stores (side, side), some an int)."""
    size = pooler.output_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def set_roi_op(model: nn.Module, roi_op: str) -> None:
    """Swap the box and mask RoI extractors of a torchvision MaskRCNN in place."""
    heads = model.roi_heads
    for attr in ("box_roi_pool", "mask_roi_pool"):
        current = getattr(heads, attr)
        if current is None:
            continue
        setattr(heads, attr, make_roi_op(roi_op, list(current.featmap_names), output_side(current)))
