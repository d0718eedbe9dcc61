"""Large synthetic images with exact ground truth: grids of the 128 px shape scenes.

Why: tiled inference is for images far larger than the model's input. A mosaic of
`grid` x `grid` scenes keeps every object at the scale the demo model was trained on
while the whole image is `grid` times larger, so "untiled" (the model shrinks the
mosaic to its input size) and "tiled" can be scored on the same pixels. Scene (r, c)
of mosaic m is scene `m * grid * grid + r * grid + c` of the stream, so mosaics are
reproducible and never share a scene.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrcnn_cli.train.synthetic import (
    VAL_STREAM,
    ShapeInstance,
    categories,
    generate_scene,
    instance_annotations,
    scene_rng,
)


def mosaic_scene(
    seed: int, index: int, grid: int, size: int = 128, stream: int = VAL_STREAM
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """RGB uint8 [grid*size, grid*size, 3] and its instances, masks in the mosaic frame."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    side = grid * size
    image = np.zeros((side, side, 3), np.uint8)
    instances: list[ShapeInstance] = []
    for r in range(grid):
        for c in range(grid):
            scene = index * grid * grid + r * grid + c
            tile, found = generate_scene(scene_rng(seed, scene, stream), size)
            rows, cols = slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size)
            image[rows, cols] = tile
            for inst in found:
                mask = np.zeros((side, side), bool)
                mask[rows, cols] = inst.mask
                instances.append(ShapeInstance(inst.category_id, mask))
    return image, instances


def mosaic_dataset(
    seed: int, count: int, grid: int, size: int = 128, stream: int = VAL_STREAM
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """`count` mosaics and their COCO ground truth (image ids 1..count, RLE masks)."""
    images: list[np.ndarray] = []
    entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        image, instances = mosaic_scene(seed, index, grid, size, stream)
        images.append(image)
        side = image.shape[0]
        entries.append({"id": index + 1, "file_name": f"mosaic_{index:04d}.png",
                        "width": side, "height": side})  # fmt: skip
        annotations += instance_annotations(instances, index + 1, len(annotations) + 1)
    dataset = {"images": entries, "annotations": annotations, "categories": categories()}
    return images, dataset
