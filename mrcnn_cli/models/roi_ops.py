"""RoI feature extraction: torchvision's RoIAlign, or quantised RoIPool for comparison.

The Mask R-CNN paper's ablation (RoIPool 26.9 vs RoIAlign 30.3 mask AP) comes from
removing quantisation; `MultiScaleRoIPool` puts it back at the same output sizes and
with the same FPN level assignment, so the two differ in the sampling op alone.
"""

from __future__ import annotations

import math

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
        max_h = max(s[0] for s in image_shapes)
        max_w = max(s[1] for s in image_shapes)
        scales = [_level_scale(f.shape[-2:], (max_h, max_w)) for f in features]
        k_min = -math.log2(scales[0])
        k_max = -math.log2(scales[-1])
        rois = _boxes_to_rois(boxes)
        num_rois = rois.shape[0]
        channels = features[0].shape[1]
        result = features[0].new_zeros((num_rois, channels, *self.output_size))
        if num_rois == 0:
            return result
        levels = self._assign_levels(boxes, k_min, k_max)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                pooled = roi_pool(feature, rois[idx], self.output_size, spatial_scale=scale)
                result[idx] = pooled.to(result.dtype)
        return result

    def _assign_levels(self, boxes: list[Tensor], k_min: float, k_max: float) -> Tensor:
        # Same rule as the FPN paper (eq. 1) and torchvision's LevelMapper.
        all_boxes = torch.cat(boxes)
        area = (all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1])
        s = torch.sqrt(area.clamp(min=0))
        k = torch.floor(self.canonical_level + torch.log2(s / self.canonical_scale) + 1e-6)
        k = torch.clamp(k, min=k_min, max=k_max)
        return (k - k_min).to(torch.int64)


def _level_scale(feature_size: torch.Size, image_size: tuple[int, int]) -> float:
    approx = float(feature_size[-1]) / float(image_size[1])
    return 2.0 ** float(torch.tensor(approx).log2().round())


def _boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    ids = [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(ids), torch.cat(boxes)], dim=1)


def make_roi_op(roi_op: str, featmap_names: list[str], output_size: int) -> nn.Module:
    if roi_op == "align":
        return MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio=2)
    if roi_op == "pool":
        return MultiScaleRoIPool(featmap_names, output_size)
    raise ValueError(f"unknown RoI op {roi_op!r}; choose one of {', '.join(ROI_OPS)}")


def set_roi_op(model: nn.Module, roi_op: str) -> None:
    """Swap the box and mask RoI extractors of a torchvision MaskRCNN in place."""
    heads = model.roi_heads
    for attr in ("box_roi_pool", "mask_roi_pool"):
        current = getattr(heads, attr)
        if current is None:
            continue
        size = current.output_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        setattr(heads, attr, make_roi_op(roi_op, list(current.featmap_names), int(size)))
