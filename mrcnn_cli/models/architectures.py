"""Builders for the architectures we know, each returning an untrained torchvision MaskRCNN.

The two COCO architectures are torchvision's own; `maskrcnn_resnet18_fpn_lite` is a
compact variant for training on a CPU: ResNet-18 FPN with narrow FPN and head channels
and fewer sampled RoIs (the default R50 heads sample 512 RoIs per image and a step
takes ~30 s on two cores; this one takes well under a second at 128 px).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.models.roi_ops import make_roi_op, set_roi_op

# Inference settings every architecture accepts; torchvision's defaults are the paper's.
COCO_DEFAULTS: dict[str, Any] = {
    "min_size": 800,
    "max_size": 1333,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000,
    "box_nms_thresh": 0.5,
    "box_detections_per_img": 100,
}


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture, and where its pretrained COCO weights live."""

    name: str
    build: Callable[..., MaskRCNN]
    defaults: dict[str, Any] = field(default_factory=dict)
    coco_weights: Any = None  # a torchvision WeightsEnum member, or None

    @property
    def weights_file_name(self) -> str | None:
        return None if self.coco_weights is None else self.coco_weights.url.rsplit("/", 1)[-1]


def _torchvision_builder(fn: Callable[..., MaskRCNN]) -> Callable[..., MaskRCNN]:
    def build(num_classes: int, roi_op: str = "align", **settings: Any) -> MaskRCNN:
        model = fn(weights=None, weights_backbone=None, num_classes=num_classes, **settings)
        if roi_op != "align":
            set_roi_op(model, roi_op)
        return model

    return build


def build_resnet18_fpn_lite(
    num_classes: int,
    roi_op: str = "align",
    fpn_channels: int = 64,
    box_head_width: int = 256,
    mask_head_channels: int = 64,
    mask_head_layers: int = 4,
    **settings: Any,
) -> MaskRCNN:
    """ResNet-18 up to layer3 + FPN (P2-P5) with trainable BatchNorm: trains from scratch.

    Leaving out layer4 (8.4M of ResNet-18's 11.7M parameters) keeps the checkpoint
    small enough to ship (~8 MB in fp16); objects of 16-64 px in 128 px images need no
    stride-32 features.
    """
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2"},
        in_channels_list=[64, 128, 256],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    anchors = AnchorGenerator(
        sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4
    )
    levels = ["0", "1", "2"]
    # MaskRCNN's constructor accepts only RoIAlign modules: build with it, then swap.
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=make_roi_op("align", levels, 7),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_width),
        box_predictor=FastRCNNPredictor(box_head_width, num_classes),
        mask_roi_pool=make_roi_op("align", levels, 14),
        mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * mask_head_layers, 1),
        mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes),
        **settings,
    )
    if roi_op != "align":
        set_roi_op(model, roi_op)
    return model


ARCHITECTURES: dict[str, Architecture] = {
    "maskrcnn_resnet50_fpn": Architecture(
        "maskrcnn_resnet50_fpn",
        _torchvision_builder(maskrcnn_resnet50_fpn),
        dict(COCO_DEFAULTS),
        MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    ),
    "maskrcnn_resnet50_fpn_v2": Architecture(
        "maskrcnn_resnet50_fpn_v2",
        _torchvision_builder(maskrcnn_resnet50_fpn_v2),
        dict(COCO_DEFAULTS),
        MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
    ),
    "maskrcnn_resnet18_fpn_lite": Architecture(
        "maskrcnn_resnet18_fpn_lite",
        build_resnet18_fpn_lite,
        {
            **COCO_DEFAULTS,
            "min_size": 128,
            "max_size": 128,
            "rpn_pre_nms_top_n_train": 600,
            "rpn_post_nms_top_n_train": 300,
            "rpn_pre_nms_top_n_test": 300,
            "rpn_post_nms_top_n_test": 300,
            "rpn_batch_size_per_image": 128,
            "box_batch_size_per_image": 64,
        },
    ),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise MrcnnError(f"unknown architecture {name!r}; known: {known}") from None


def coco_class_names() -> tuple[str, ...]:
    """torchvision's 91-slot COCO list ('__background__', 'person', ..., with 'N/A' gaps).

    The slot index equals the COCO category id, so label == category id for these models.
    """
    return tuple(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
