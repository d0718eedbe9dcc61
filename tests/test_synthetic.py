"""Specification of the synthetic shapes dataset: seeded, exact masks, valid COCO."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.train.synthetic import (
    CATEGORY_NAMES,
    SceneConfig,
    SceneLayout,
    SceneObject,
    compose,
    generate_scene,
    instance_annotations,
    sample_layout,
    scene_rng,
    visible_masks,
    write_dataset,
    write_splits,
)

SIZE = 64


def _square_mask(x0: int, y0: int, x1: int, y1: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _solid(colour: tuple[int, int, int], size: int = SIZE) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()


def test_same_seed_and_index_give_identical_scene() -> None:
    image_a, inst_a = generate_scene(scene_rng(7, 3), 128)
    image_b, inst_b = generate_scene(scene_rng(7, 3), 128)
    assert image_a.dtype == np.uint8 and image_a.shape == (128, 128, 3)
    assert np.array_equal(image_a, image_b)
    assert [i.category_id for i in inst_a] == [i.category_id for i in inst_b]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(inst_a, inst_b, strict=True))


def test_different_index_gives_different_image() -> None:
    image_a, _ = generate_scene(scene_rng(7, 0), 128)
    image_b, _ = generate_scene(scene_rng(7, 1), 128)
    assert not np.array_equal(image_a, image_b)


def test_image_does_not_depend_on_how_many_images_are_written(tmp_path: Path) -> None:
    write_dataset(tmp_path / "few", 2, seed=5, size=SIZE)
    write_dataset(tmp_path / "more", 4, seed=5, size=SIZE)
    for name in ("000000.png", "000001.png"):
        few = (tmp_path / "few" / "images" / name).read_bytes()
        assert few == (tmp_path / "more" / "images" / name).read_bytes()
    few_anns = json.loads((tmp_path / "few" / "instances.json").read_text())["annotations"]
    more_anns = json.loads((tmp_path / "more" / "instances.json").read_text())["annotations"]
    assert few_anns == more_anns[: len(few_anns)]


def test_rewriting_with_same_seed_is_byte_identical(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", 3, seed=11, size=SIZE)
    write_dataset(tmp_path / "b", 3, seed=11, size=SIZE)
    for rel in ("instances.json", "images/000000.png", "images/000002.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_train_and_val_splits_share_no_image(tmp_path: Path) -> None:
    write_splits(tmp_path, train=6, val=6, seed=0, size=SIZE)
    train = {p.read_bytes() for p in (tmp_path / "train" / "images").glob("*.png")}
    val = {p.read_bytes() for p in (tmp_path / "val" / "images").glob("*.png")}
    assert len(train) == 6 and len(val) == 6
    assert not train & val


def test_instances_of_an_image_are_disjoint_and_non_empty() -> None:
    for index in range(30):
        _, instances = generate_scene(scene_rng(1, index), 128)
        assert instances, "every scene keeps at least its top object"
        union = np.zeros((128, 128), np.int32)
        for inst in instances:
            assert inst.mask.dtype == bool and inst.mask.sum() >= 40
            union += inst.mask
        assert union.max() <= 1


def test_image_pixels_match_masks_exactly() -> None:
    """Outside every mask the background shows; inside, exactly that object's texture."""
    config = SceneConfig()
    for index in range(30):
        layout = sample_layout(scene_rng(2, index), 96, config)
        image, instances = compose(layout, config)
        kept = visible_masks(
            [o.full_mask for o in layout.objects],
            config.min_visible_fraction,
            config.min_visible_pixels,
        )
        painted = np.zeros((96, 96), bool)
        kept_objects = [o for o, v in zip(layout.objects, kept, strict=True) if v is not None]
        assert len(kept_objects) == len(instances)
        for obj, inst in zip(kept_objects, instances, strict=True):
            assert np.array_equal(image[inst.mask], obj.fill[inst.mask])
            painted |= inst.mask
        assert np.array_equal(image[~painted], layout.background[~painted])


def test_earlier_object_mask_excludes_pixels_of_later_object() -> None:
    bottom = _square_mask(10, 10, 40, 40)
    top = _square_mask(25, 25, 55, 55)
    vis_bottom, vis_top = visible_masks([bottom, top], 0.3, 40)
    assert vis_top is not None and np.array_equal(vis_top, top)
    assert vis_bottom is not None
    assert np.array_equal(vis_bottom, bottom & ~top)
    assert not (vis_bottom & top).any()


def test_mostly_hidden_object_is_dropped_and_not_drawn() -> None:
    hidden = _square_mask(20, 20, 30, 30)  # 100 px, of which rows 28-29 (20 px) stay visible
    cover = _square_mask(10, 10, 50, 28)
    layout = SceneLayout(
        background=_solid((0, 0, 0)),
        objects=(
            SceneObject(1, hidden, _solid((255, 0, 0))),
            SceneObject(2, cover, _solid((0, 255, 0))),
        ),
    )
    image, instances = compose(layout, SceneConfig())
    assert [i.category_id for i in instances] == [2]
    assert not (image == np.array([255, 0, 0], np.uint8)).all(axis=-1).any()


def test_dropped_object_does_not_cut_the_object_beneath_it() -> None:
    base = _square_mask(0, 0, 40, 40)
    dropped = _square_mask(5, 5, 15, 15)  # fully covered by top -> dropped
    top = _square_mask(0, 0, 20, 20)
    vis_base, vis_dropped, vis_top = visible_masks([base, dropped, top], 0.3, 40)
    assert vis_dropped is None and vis_top is not None and vis_base is not None
    assert np.array_equal(vis_base, base & ~top)


def test_rle_decodes_to_instance_mask_with_matching_bbox_and_area() -> None:
    _, instances = generate_scene(scene_rng(3, 0, stream=0), 128, SceneConfig(min_objects=4))
    records = instance_annotations(instances, image_id=9, first_annotation_id=21)
    assert [r["id"] for r in records] == list(range(21, 21 + len(instances)))
    for inst, rec in zip(instances, records, strict=True):
        assert rec["image_id"] == 9 and rec["iscrowd"] == 0
        assert isinstance(rec["segmentation"]["counts"], str)
        rle = {"size": rec["segmentation"]["size"], "counts": rec["segmentation"]["counts"]}
        decoded = mask_utils.decode(rle).astype(bool)
        assert np.array_equal(decoded, inst.mask)
        assert rec["area"] == inst.mask.sum()
        ys, xs = np.nonzero(inst.mask)
        x, y = xs.min(), ys.min()
        assert rec["bbox"] == [x, y, xs.max() - x + 1, ys.max() - y + 1]


def test_written_dataset_loads_with_pycocotools_and_images_match(tmp_path: Path) -> None:
    json_path = write_dataset(tmp_path, 5, seed=4, size=SIZE)
    coco = COCO(str(json_path))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4, 5]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORY_NAMES)
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(str(tmp_path / "images" / img["file_name"]), cv2.IMREAD_UNCHANGED)
        assert pixels is not None
        assert pixels.shape == (img["height"], img["width"], 3)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            assert coco.annToMask(ann).shape == pixels.shape[:2]


def test_png_holds_the_generated_rgb_pixels(tmp_path: Path) -> None:
    write_dataset(tmp_path, 1, seed=8, size=SIZE)
    expected, _ = generate_scene(scene_rng(8, 0), SIZE)
    bgr = cv2.imread(str(tmp_path / "images" / "000000.png"))
    assert np.array_equal(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), expected)


def test_every_category_appears_within_fifty_images() -> None:
    seen = set()
    for index in range(50):
        _, instances = generate_scene(scene_rng(0, index), SIZE)
        seen |= {i.category_id for i in instances}
    assert seen == {1, 2, 3}


def test_object_count_stays_within_configured_range() -> None:
    config = SceneConfig(min_objects=2, max_objects=3)
    for index in range(20):
        layout = sample_layout(scene_rng(6, index), SIZE, config)
        assert 2 <= len(layout.objects) <= 3


def test_impossible_settings_are_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(MrcnnError):
        write_dataset(tmp_path, 1, seed=0, size=SIZE, config=SceneConfig(min_objects=0))
    with pytest.raises(MrcnnError):
        write_dataset(tmp_path, -1, seed=0, size=SIZE)


def test_generated_scenes_contain_occlusions_that_cut_earlier_masks() -> None:
    """Overlaps really happen in seeded data, and the lower object loses the covered pixels."""
    config = SceneConfig(min_objects=4)
    cut = 0
    for index in range(20):
        layout = sample_layout(scene_rng(9, index), SIZE, config)
        _, instances = compose(layout, config)
        full = [o.full_mask for o in layout.objects]
        kept = visible_masks(full, config.min_visible_fraction, config.min_visible_pixels)
        kept_full = [f for f, v in zip(full, kept, strict=True) if v is not None]
        for i, inst in enumerate(instances):
            later = np.zeros_like(inst.mask)
            for f in kept_full[i + 1 :]:
                later |= f
            assert not (inst.mask & later).any()
            assert np.array_equal(inst.mask, kept_full[i] & ~later)
            cut += bool((kept_full[i] & later).any())
    assert cut > 0
