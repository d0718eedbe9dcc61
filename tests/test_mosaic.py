"""Synthetic mosaics: grids of shape scenes with ground truth in the mosaic frame."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_cli.train.mosaic import mosaic_dataset, mosaic_scene
from mrcnn_cli.train.synthetic import VAL_STREAM, generate_scene, scene_rng


def test_a_mosaic_is_its_scenes_side_by_side() -> None:
    image, _ = mosaic_scene(seed=1, index=0, grid=2, size=64)
    assert image.shape == (128, 128, 3)
    for scene, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        tile, _ = generate_scene(scene_rng(1, scene, VAL_STREAM), 64)
        np.testing.assert_array_equal(image[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64], tile)


def test_instance_masks_sit_in_their_scene_of_the_mosaic() -> None:
    _, instances = mosaic_scene(seed=1, index=0, grid=2, size=64)
    _, last_scene = generate_scene(scene_rng(1, 3, VAL_STREAM), 64)
    tail = instances[-len(last_scene) :]
    for inst, original in zip(tail, last_scene):
        assert inst.category_id == original.category_id
        np.testing.assert_array_equal(inst.mask[64:, 64:], original.mask)
        assert inst.mask.sum() == original.mask.sum()


def test_mosaics_of_a_dataset_never_share_a_scene() -> None:
    images, _ = mosaic_dataset(seed=1, count=2, grid=2, size=64)
    assert not np.array_equal(images[0], images[1])
    second, _ = mosaic_scene(seed=1, index=1, grid=2, size=64)
    np.testing.assert_array_equal(images[1], second)


def test_the_ground_truth_is_coco_with_one_annotation_per_instance() -> None:
    images, gt = mosaic_dataset(seed=2, count=2, grid=2, size=64)
    assert [im["id"] for im in gt["images"]] == [1, 2]
    assert {im["width"] for im in gt["images"]} == {128}
    counts = [len(mosaic_scene(2, i, 2, 64)[1]) for i in range(2)]
    assert len(gt["annotations"]) == sum(counts)
    assert [a["id"] for a in gt["annotations"]] == list(range(1, sum(counts) + 1))
    first = gt["annotations"][0]
    assert mask_utils.decode(first["segmentation"]).shape == (128, 128)
    assert [c["name"] for c in gt["categories"]] == ["circle", "square", "triangle"]
