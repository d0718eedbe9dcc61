"""The early-stopping per-class NMS keeps exactly what torchvision's batched_nms keeps."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from mrcnn_cli.models.topk_nms import CHUNK, top_k_batched_nms


def crowded_candidates(n: int, classes: int, seed: int):
    """Many overlapping boxes in a few places, over several classes, distinct scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=g) * 400
    pick = torch.randint(0, 8, (n,), generator=g)
    xy = centres[pick] + torch.randn(n, 2, generator=g) * 12
    wh = 20 + torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randperm(n, generator=g).float() / n
    labels = torch.randint(0, classes, (n,), generator=g)
    return boxes, scores, labels


@pytest.mark.parametrize(
    "n, classes, k", [(50, 3, 100), (3 * CHUNK + 7, 5, 100), (4000, 90, 100), (4000, 2, 1000)]
)
def test_the_boxes_kept_equal_batched_nms_cut_to_k(n, classes, k):
    boxes, scores, labels = crowded_candidates(n, classes, seed=n + classes)
    expected = batched_nms(boxes, scores, labels, 0.5)[:k]
    assert torch.equal(top_k_batched_nms(boxes, scores, labels, 0.5, k), expected)


def test_no_candidates_keep_nothing():
    empty = torch.zeros((0, 4))
    kept = top_k_batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5, 100)
    assert kept.numel() == 0


def test_the_rois_heads_postprocess_gives_torchvisions_detections():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from mrcnn_cli.models.topk_nms import install_top_k_nms

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
    heads = model.roi_heads
    proposals = [crowded_candidates(1000, 1, seed=1)[0], crowded_candidates(700, 1, seed=2)[0]]
    logits = torch.randn(1700, 91) * 3
    deltas = torch.randn(1700, 91 * 4) * 0.1
    shapes = [(480, 640), (500, 400)]
    expected = heads.postprocess_detections(logits, deltas, proposals, shapes)
    install_top_k_nms(heads)
    got = heads.postprocess_detections(logits, deltas, proposals, shapes)
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            assert torch.equal(a, b)
