"""Post-processing: the box-local mask paste equals torchvision's full-image paste, and
`--classes` resolves names and ids to label indices (and filtering changes nothing else).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import expand_boxes, paste_masks_in_image

from mrcnn_cli.decode import decode_image
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.models.architectures import coco_class_names
from mrcnn_cli.postprocess import expanded_int_boxes, paste_masks, resolve_class_filter
from mrcnn_cli.segmenter import Segmenter

HEIGHT, WIDTH, M = 61, 83, 28


def torchvision_paste(probs: torch.Tensor, boxes: torch.Tensor, threshold: float) -> np.ndarray:
    pasted = paste_masks_in_image(probs[:, None], boxes, (HEIGHT, WIDTH), padding=1)
    return (pasted[:, 0] > threshold).numpy()


def random_probs(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, M, M, generator=torch.Generator().manual_seed(seed))


# Every kind of box a model can hand over after clipping, and some it cannot.
EDGE_BOXES = torch.tensor(
    [
        [10.3, 5.7, 40.9, 30.2],  # inside
        [-12.0, -7.5, 20.4, 18.8],  # over the top-left corner
        [60.2, 40.1, 95.0, 75.3],  # over the bottom-right corner
        [0.0, 0.0, float(WIDTH), float(HEIGHT)],  # the whole image
        [20.0, 20.0, 20.4, 20.3],  # under a pixel wide and high
        [30.5, 10.0, 31.2, 50.0],  # a thin vertical sliver
        [5.0, 59.8, 70.0, 60.9],  # a thin strip on the bottom edge
        [82.2, 0.0, 83.0, 61.0],  # a sliver on the right edge
        [-40.0, 10.0, 200.0, 30.0],  # wider than the image on both sides
    ]
)


def test_expanded_int_boxes_equal_torchvision_expand_boxes():
    boxes = torch.rand(200, 4, generator=torch.Generator().manual_seed(1)) * 300 - 50
    boxes[:, 2:] += boxes[:, :2]
    scale = (M + 2) / M
    expected = expand_boxes(boxes, scale).to(torch.int64)
    assert torch.equal(expanded_int_boxes(boxes, M), expected)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.9])
def test_box_local_paste_equals_torchvision_paste_on_edge_boxes(threshold):
    probs = random_probs(len(EDGE_BOXES), seed=2)
    ours = paste_masks(probs, EDGE_BOXES, HEIGHT, WIDTH, threshold)
    assert ours.dtype == bool and ours.shape == (len(EDGE_BOXES), HEIGHT, WIDTH)
    np.testing.assert_array_equal(ours, torchvision_paste(probs, EDGE_BOXES, threshold))


def test_box_local_paste_equals_torchvision_paste_on_random_boxes():
    gen = torch.Generator().manual_seed(3)
    n = 300
    centres = torch.rand(n, 2, generator=gen) * torch.tensor([WIDTH, HEIGHT])
    sizes = torch.rand(n, 2, generator=gen) ** 3 * torch.tensor([1.5 * WIDTH, 1.5 * HEIGHT])
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    probs = random_probs(n, seed=4)
    np.testing.assert_array_equal(
        paste_masks(probs, boxes, HEIGHT, WIDTH), torchvision_paste(probs, boxes, 0.5)
    )


def test_the_opencv_paste_matches_the_exact_paste_within_its_documented_tolerance():
    torch.manual_seed(3)
    corners = torch.rand(60, 2) * torch.tensor([WIDTH - 10.0, HEIGHT - 10.0])
    boxes = torch.cat([corners, corners + torch.rand(60, 2) * 80 + 2], dim=1)
    probs = random_probs(60, seed=4)
    exact = np.asarray(paste_masks(probs, boxes, HEIGHT, WIDTH))
    fast = np.asarray(paste_masks(probs, boxes, HEIGHT, WIDTH, exact=False))
    assert exact.any()
    assert (exact != fast).sum() <= 1e-4 * exact.size


def test_the_opencv_paste_keeps_the_edge_cases_of_the_exact_paste():
    exact = paste_masks(random_probs(len(EDGE_BOXES), seed=2), EDGE_BOXES, HEIGHT, WIDTH)
    fast = paste_masks(
        random_probs(len(EDGE_BOXES), seed=2), EDGE_BOXES, HEIGHT, WIDTH, exact=False
    )
    assert fast.shape == exact.shape
    np.testing.assert_array_equal(fast.areas() > 0, exact.areas() > 0)


def test_pasted_masks_are_nonempty_so_the_comparison_means_something():
    pasted = paste_masks(random_probs(len(EDGE_BOXES), seed=2), EDGE_BOXES, HEIGHT, WIDTH)
    assert pasted[:4].reshape(4, -1).any(axis=1).all()


def test_a_box_entirely_outside_the_image_pastes_an_empty_mask():
    outside = torch.tensor([[-50.0, -40.0, -20.0, -10.0], [WIDTH + 10.0, 5.0, WIDTH + 40.0, 20.0]])
    pasted = paste_masks(torch.ones(2, M, M), outside, HEIGHT, WIDTH)
    assert pasted.shape == (2, HEIGHT, WIDTH) and not pasted.any()


def test_no_detections_paste_to_an_empty_stack():
    pasted = paste_masks(torch.zeros(0, M, M), torch.zeros(0, 4), HEIGHT, WIDTH)
    assert pasted.shape == (0, HEIGHT, WIDTH) and pasted.dtype == bool


# --- --classes ---------------------------------------------------------------------

COCO_NAMES = coco_class_names()
COCO_IDS = tuple(range(len(COCO_NAMES)))


def test_no_class_filter_keeps_everything():
    assert resolve_class_filter(None, COCO_NAMES, COCO_IDS) is None
    assert resolve_class_filter([], COCO_NAMES, COCO_IDS) is None


def test_class_names_resolve_case_insensitively_to_label_indices():
    keep = resolve_class_filter(["Person", " dog ", "TRAFFIC LIGHT"], COCO_NAMES, COCO_IDS)
    assert keep == frozenset({1, 18, 10})


def test_category_ids_resolve_through_the_models_category_ids():
    names, ids = ("bg", "circle", "square", "triangle"), (0, 5, 2, 7)
    assert resolve_class_filter(["2", "triangle"], names, ids) == frozenset({2, 3})
    assert resolve_class_filter(["5"], names, ids) == frozenset({1})


def test_unknown_class_is_a_usage_error_that_lists_known_classes():
    with pytest.raises(MrcnnError) as err:
        resolve_class_filter(["unicorn"], ("bg", "circle", "square"), (0, 1, 2))
    assert "unicorn" in str(err.value) and "circle, square" in str(err.value)


@pytest.mark.parametrize("entry", ["N/A", "__background__", "0", "12"])
def test_background_and_unused_coco_slots_are_not_classes(entry):
    with pytest.raises(MrcnnError):
        resolve_class_filter([entry], COCO_NAMES, COCO_IDS)


def test_class_filter_drops_other_labels_and_leaves_the_kept_ones_unchanged(
    tiny_checkpoint, coco_images
):
    settings = {"device": "cpu", "score_thr": 0.0, "max_det": 30}
    image = decode_image(coco_images / "000000000139.jpg")
    everything = Segmenter(str(tiny_checkpoint), **settings)(image)
    circles = Segmenter(str(tiny_checkpoint), classes=["circle"], **settings)(image)
    assert set(everything.labels.tolist()) > {1}, "the model must find several classes"
    expected = everything[everything.labels == 1]
    assert len(circles) == len(expected) > 0
    np.testing.assert_array_equal(circles.labels, expected.labels)
    np.testing.assert_array_equal(circles.boxes, expected.boxes)
    np.testing.assert_array_equal(circles.scores, expected.scores)
    np.testing.assert_array_equal(circles.masks, expected.masks)
