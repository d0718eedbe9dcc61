"""Seeded synthetic instance-segmentation data: coloured shapes on noisy backgrounds.

Why: training and measuring AP needs ground truth we can trust to the pixel, and a task a
small Mask R-CNN can learn on a CPU. Classes differ only by SHAPE (colour and texture are
random), so a model must learn shape, not colour. Masks are rendered first (no
antialiasing) and pixels are painted through them, so image edges and masks agree exactly.

Reproducibility: image `i` of a stream is drawn from its own generator seeded by
`SeedSequence([seed, stream, i])`, so it is the same however many images are generated,
and the train and val streams of `write_splits` can never share a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from mrcnn_cli.atomic import write_bytes, write_json
from mrcnn_cli.errors import MrcnnError

CATEGORY_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
"""Class names; category id = position + 1 (COCO ids start at 1, 0 is background)."""

CIRCLE, SQUARE, TRIANGLE = 1, 2, 3

TRAIN_STREAM = 0
VAL_STREAM = 1

_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel vertex positions without antialiasing
_SCALE = 1 << _SHIFT
_MIN_COLOUR_DISTANCE = 100.0  # RGB L2 distance keeping an object visibly off the background


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of a scene besides its size; the defaults are what training uses."""

    min_objects: int = 1
    max_objects: int = 4
    min_object_frac: float = 0.125  # object extent (diameter / side) relative to image size
    max_object_frac: float = 0.5
    min_visible_fraction: float = 0.3  # occluded below this share of its area -> not drawn
    min_visible_pixels: int = 40

    def validate(self, size: int) -> None:
        """Raise MrcnnError for settings that cannot produce a scene."""
        if size < 16:
            raise MrcnnError(f"synthetic image size must be at least 16 px, got {size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise MrcnnError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}..{self.max_objects}"
            )
        if not 0 < self.min_object_frac <= self.max_object_frac <= 1:
            raise MrcnnError(
                "need 0 < min_object_frac <= max_object_frac <= 1, got "
                f"{self.min_object_frac}..{self.max_object_frac}"
            )


@dataclass(frozen=True)
class ShapeInstance:
    """One annotated object: its class and its VISIBLE pixels (occlusion already cut)."""

    category_id: int
    mask: np.ndarray  # bool [H, W]


@dataclass(frozen=True)
class SceneObject:
    """An object before occlusion: its full silhouette and the texture it is painted with."""

    category_id: int
    full_mask: np.ndarray  # bool [H, W]
    fill: np.ndarray  # uint8 [H, W, 3]; only pixels under full_mask are used


@dataclass(frozen=True)
class SceneLayout:
    """Everything sampled for one image; `compose` turns it into pixels and annotations."""

    background: np.ndarray  # uint8 [H, W, 3]
    objects: tuple[SceneObject, ...]  # in drawing order: later ones occlude earlier ones


def scene_rng(seed: int, index: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
    """The generator for image `index` of a stream: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _random_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """A colour at least _MIN_COLOUR_DISTANCE from all of `avoid` (best of 64 if none is)."""
    best, best_dist = None, -1.0
    for _ in range(64):
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        dist = min((float(np.linalg.norm(colour - a)) for a in avoid), default=np.inf)
        if dist >= _MIN_COLOUR_DISTANCE:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    assert best is not None
    return best


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A base colour plus gradient, low-frequency blotches and pixel noise (image, base)."""
    base = rng.integers(0, 256, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0, 50)
    grid = rng.normal(0, rng.uniform(0, 12), size=(4, 4, 3)).astype(np.float32)
    blotches = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, rng.uniform(0, 8), size=(size, size, 3)).astype(np.float32)
    image = base + gradient[..., None] + blotches + noise
    return np.clip(image, 0, 255).astype(np.uint8), base


def _fill(
    rng: np.random.Generator, size: int, colour: np.ndarray, avoid: list[np.ndarray]
) -> np.ndarray:
    """A solid, striped or speckled texture in `colour` over the whole image."""
    kind = rng.integers(3)
    fill = np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    if kind == 1:  # stripes at a random angle
        second = _random_colour(rng, [*avoid, colour])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 10)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 1)
        fill = np.where((phase % 1.0 < 0.5)[..., None], fill, second)
    elif kind == 2:  # grainy fill with speckles of a second colour
        second = _random_colour(rng, [*avoid, colour])
        fill = fill + rng.normal(0, 15, size=(size, size, 1)).astype(np.float32)
        fill = np.where((rng.random((size, size)) < 0.15)[..., None], second, fill)
    return np.clip(fill, 0, 255).astype(np.uint8)


def _polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    pts = np.round(points * _SCALE).astype(np.int32).reshape(1, -1, 2)
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def _shape_mask(rng: np.random.Generator, category_id: int, size: int, extent: float) -> np.ndarray:
    """The silhouette of one shape whose diameter / side is about `extent` px."""
    r = extent / 2
    if category_id == CIRCLE:
        circumradius = r
    elif category_id == SQUARE:
        half = np.array([r, r * rng.uniform(0.9, 1.1)])
        circumradius = float(np.linalg.norm(half))
    else:
        circumradius = r
    margin = min(circumradius, size / 2)
    cx, cy = rng.uniform(margin, size - margin, size=2)
    if category_id == CIRCLE:
        mask = np.zeros((size, size), np.uint8)
        centre = (round(cx * _SCALE), round(cy * _SCALE))
        cv2.circle(mask, centre, round(r * _SCALE), 1, -1, cv2.LINE_8, _SHIFT)
        return mask.astype(bool)
    if category_id == SQUARE:
        theta = np.deg2rad(rng.uniform(-15, 15)) if rng.random() < 0.5 else 0.0
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        return _polygon_mask(size, corners @ rot.T + [cx, cy])
    angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
    angles = angles + rng.uniform(-0.3, 0.3, size=3)
    radii = r * rng.uniform(0.85, 1.0, size=3)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return _polygon_mask(size, points)


def sample_layout(
    rng: np.random.Generator, size: int = 128, config: SceneConfig = SceneConfig()
) -> SceneLayout:
    """Draw the background and every object (full silhouette and texture) of one scene."""
    config.validate(size)
    background, base = _background(rng, size)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[SceneObject] = []
    colours: list[np.ndarray] = [base]
    for _ in range(count):
        category_id = int(rng.integers(1, len(CATEGORY_NAMES) + 1))
        for _attempt in range(20):  # a shape too small to ever be kept is re-drawn
            extent = rng.uniform(config.min_object_frac, config.max_object_frac) * size
            full_mask = _shape_mask(rng, category_id, size, extent)
            if full_mask.sum() >= config.min_visible_pixels:
                break
        colour = _random_colour(rng, colours)
        fill = _fill(rng, size, colour, [base])
        colours.append(colour)
        objects.append(SceneObject(category_id, full_mask, fill))
    return SceneLayout(background, tuple(objects))


def visible_masks(
    full_masks: list[np.ndarray], min_visible_fraction: float, min_visible_pixels: int
) -> list[np.ndarray | None]:
    """Each object's visible pixels after later objects are drawn; None = too hidden to keep.

    Walks from the top object down, so an object that is dropped occludes nothing: it is
    not drawn at all, and the objects under it keep those pixels.
    """
    if not full_masks:
        return []
    covered = np.zeros(full_masks[0].shape, bool)
    visible: list[np.ndarray | None] = [None] * len(full_masks)
    for i in reversed(range(len(full_masks))):
        full = full_masks[i]
        vis = full & ~covered
        area = int(vis.sum())
        if area < min_visible_pixels or area < min_visible_fraction * int(full.sum()):
            continue
        visible[i] = vis
        covered |= full
    return visible


def compose(
    layout: SceneLayout, config: SceneConfig = SceneConfig()
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """Paint the kept objects in order over the background; return image and instances."""
    visible = visible_masks(
        [o.full_mask for o in layout.objects],
        config.min_visible_fraction,
        config.min_visible_pixels,
    )
    image = layout.background.copy()
    instances: list[ShapeInstance] = []
    for obj, vis in zip(layout.objects, visible, strict=True):
        if vis is None:
            continue
        image[obj.full_mask] = obj.fill[obj.full_mask]
        instances.append(ShapeInstance(obj.category_id, vis))
    return image, instances


def generate_scene(
    rng: np.random.Generator, size: int = 128, config: SceneConfig = SceneConfig()
) -> tuple[np.ndarray, list[ShapeInstance]]:
    """One RGB uint8 [size, size, 3] image and its instances (visible masks, draw order)."""
    return compose(sample_layout(rng, size, config), config)


def instance_annotations(
    instances: list[ShapeInstance], image_id: int, first_annotation_id: int
) -> list[dict[str, Any]]:
    """COCO annotation records: RLE segmentation (occluded masks are not simple polygons)."""
    records = []
    for offset, inst in enumerate(instances):
        rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        records.append(
            {
                "id": first_annotation_id + offset,
                "image_id": image_id,
                "category_id": inst.category_id,
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                "area": float(inst.mask.sum()),
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
    return records


def categories() -> list[dict[str, Any]]:
    """The COCO `categories` list for CATEGORY_NAMES."""
    return [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(CATEGORY_NAMES)
    ]


def write_dataset(
    out_dir: Path,
    num_images: int,
    seed: int,
    size: int = 128,
    *,
    stream: int = TRAIN_STREAM,
    config: SceneConfig = SceneConfig(),
) -> Path:
    """Write `out_dir/images/NNNNNN.png` and `out_dir/instances.json`; return the json path.

    Image ids and annotation ids start at 1; `file_name` is relative to `out_dir/images`.
    """
    if num_images < 0:
        raise MrcnnError(f"number of images must be >= 0, got {num_images}")
    config.validate(size)
    out_dir = Path(out_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(num_images):
        image, instances = generate_scene(scene_rng(seed, index, stream), size, config)
        file_name = f"{index:06d}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise MrcnnError(f"could not encode synthetic image {file_name} as PNG")
        write_bytes(out_dir / "images" / file_name, png.tobytes())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        annotations += instance_annotations(instances, image_id, len(annotations) + 1)
    info = {
        "description": "mrcnn synthetic shapes",
        "seed": seed,
        "stream": stream,
        "size": size,
    }
    dataset = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    json_path = out_dir / "instances.json"
    write_json(json_path, dataset)
    return json_path


def write_splits(root: Path, train: int, val: int, seed: int = 0, size: int = 128) -> None:
    """Write `root/train/` and `root/val/` datasets; their seed streams never overlap."""
    write_dataset(Path(root) / "train", train, seed, size, stream=TRAIN_STREAM)
    write_dataset(Path(root) / "val", val, seed, size, stream=VAL_STREAM)
