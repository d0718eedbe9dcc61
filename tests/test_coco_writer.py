"""COCO results: RLE, bbox conversion, loadRes/COCOeval compatibility, image ids."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import COCO_DIR as COCO_MINI
from helpers import needs_coco
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_cli.detections import Detections, encode_rle
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.sources import image_ids_from_annotations
from mrcnn_cli.writers.coco import (
    assign_image_ids,
    image_entry,
    image_id_for,
    write_images_file,
    write_predictions,
)

CLASS_NAMES = ("__background__", "person", "car")
CATEGORY_IDS = (0, 1, 3)


def rect_dets(h: int = 20, w: int = 30) -> Detections:
    masks = np.zeros((2, h, w), bool)
    masks[0, 2:10, 3:12] = True
    masks[1, 5:18, 15:29] = True
    boxes = [[3, 2, 12, 10], [15.123, 5.456, 29, 18]]
    return Detections(boxes, [0.987654321, 0.5], [1, 2], masks, CLASS_NAMES, CATEGORY_IDS)


def quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate(gt: COCO, results: list[dict], iou_type: str, image_ids: list[int]) -> float:
    """AP@[.5:.95] of `results` against `gt`, COCOeval's own printing hidden."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_encode_rle_decodes_back_to_the_same_mask() -> None:
    mask = np.random.default_rng(0).random((13, 17)) > 0.6
    np.testing.assert_array_equal(mask_utils.decode(encode_rle(mask)).astype(bool), mask)


def test_encode_rle_is_json_ready() -> None:
    rle = encode_rle(np.ones((4, 5), bool))
    assert rle["size"] == [4, 5] and isinstance(rle["counts"], str)
    json.dumps(rle)


def test_results_carry_xywh_boxes_rounded_to_two_decimals() -> None:
    results = rect_dets().to_coco(7)
    assert results[0]["bbox"] == [3.0, 2.0, 9.0, 8.0]
    assert results[1]["bbox"] == [15.12, 5.46, 13.88, 12.54]


def test_results_carry_coco_category_ids_not_label_indices() -> None:
    results = rect_dets().to_coco(7)
    assert [r["category_id"] for r in results] == [1, 3]


def test_results_keep_detection_order_image_id_and_rounded_scores() -> None:
    results = rect_dets().to_coco(7)
    assert [r["score"] for r in results] == [0.98765, 0.5]
    assert all(r["image_id"] == 7 for r in results)


def test_results_without_masks_have_no_segmentation() -> None:
    dets = rect_dets()
    dets.masks = None
    assert all("segmentation" not in r for r in dets.to_coco(1))


def test_perfect_results_score_ap_one_against_a_tiny_ground_truth() -> None:
    dets = rect_dets()
    gt = quiet_coco(
        {
            "images": [{"id": 7, "file_name": "a.jpg", "width": 30, "height": 20}],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
            "annotations": [
                {"id": k + 1, "image_id": 7, "category_id": cat, "iscrowd": 0,
                 "segmentation": encode_rle(m), "area": float(m.sum()),
                 "bbox": mask_utils.toBbox(encode_rle(m)).tolist()}
                for k, (m, cat) in enumerate(zip(dets.masks, (1, 3), strict=True))
            ],
        }
    )  # fmt: skip
    assert evaluate(gt, dets.to_coco(7), "segm", [7]) == pytest.approx(1.0)


def coco_image_as_detections(gt: COCO, image_id: int) -> Detections:
    """The ground truth of one real image dressed up as model output (score 1.0)."""
    cat_ids = sorted(gt.getCatIds())
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=False))
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    return Detections(
        boxes=boxes,
        scores=np.ones(len(anns)),
        labels=[cat_ids.index(a["category_id"]) + 1 for a in anns],
        masks=np.stack([gt.annToMask(a).astype(bool) for a in anns]),
        class_names=("__background__", *(c["name"] for c in gt.loadCats(cat_ids))),
        category_ids=(0, *cat_ids),
    )


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@needs_coco
def test_real_coco_ground_truth_round_trips_to_ap_one(iou_type: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(COCO_MINI / "instances.json"))
    image_id = 139  # 20 instances of 10 classes, none crowd
    dets = coco_image_as_detections(gt, image_id)
    assert len(dets) > 10
    assert evaluate(gt, dets.to_coco(image_id), iou_type, [image_id]) == 1.0


def test_written_predictions_and_images_read_back(tmp_path: Path) -> None:
    results = rect_dets().to_coco(7)
    write_predictions(tmp_path / "predictions.json", results)
    write_images_file(tmp_path / "images.json", [image_entry(7, "sub/a.jpg", 30, 20)])
    assert json.loads((tmp_path / "predictions.json").read_text()) == results
    assert json.loads((tmp_path / "images.json").read_text()) == [
        {"id": 7, "file_name": "sub/a.jpg", "width": 30, "height": 20}
    ]


def write_ann(tmp_path: Path, images: list[dict]) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return path


def test_annotation_ids_are_found_by_file_name_and_by_basename(tmp_path: Path) -> None:
    ids = image_ids_from_annotations(write_ann(tmp_path, [{"id": 42, "file_name": "val/x.jpg"}]))
    assert ids["val/x.jpg"] == 42 and ids["x.jpg"] == 42
    assert image_id_for(ids, "val/x.jpg") == 42
    assert image_id_for(ids, "elsewhere/x.jpg") == 42
    assert image_id_for(ids, "y.jpg") is None


def test_basenames_shared_by_two_annotation_images_are_not_guessed(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a/x.jpg"}, {"id": 2, "file_name": "b/x.jpg"}]
    ids = image_ids_from_annotations(write_ann(tmp_path, images))
    assert "x.jpg" not in ids and ids["b/x.jpg"] == 2


@needs_coco
def test_real_coco_annotation_file_gives_real_ids() -> None:
    ids = image_ids_from_annotations(COCO_MINI / "instances.json")
    assert ids["000000000139.jpg"] == 139 and len(ids) == 50


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "annotations file not found"),
        ("{not json", "not valid JSON"),
        ('{"annotations": []}', "not a COCO annotation file"),
        ('{"images": [{"id": 1}]}', "has no 'file_name'"),
        ('{"images": [{"id": "a", "file_name": "x.jpg"}]}', "no integer 'id'"),
        ('{"images": [{"id": 1.5, "file_name": "x.jpg"}]}', "no integer 'id'"),
    ],
)
def test_bad_annotation_files_raise_a_clear_user_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MrcnnError, match=message):
        image_ids_from_annotations(path)


def test_fresh_ids_count_up_from_above_the_known_ones() -> None:
    ids = assign_image_ids(["b.jpg", "new1.jpg", "a.jpg", "new2.jpg"], {"a.jpg": 5, "b.jpg": 9})
    assert ids == {"b.jpg": 9, "new1.jpg": 10, "a.jpg": 5, "new2.jpg": 11}


def test_without_annotations_ids_are_one_to_n_in_input_order() -> None:
    assert assign_image_ids(["z.jpg", "a.jpg"]) == {"z.jpg": 1, "a.jpg": 2}


def test_two_inputs_matching_one_annotation_image_get_distinct_ids() -> None:
    ids = assign_image_ids(["a/x.jpg", "b/x.jpg"], {"x.jpg": 3})
    assert ids == {"a/x.jpg": 3, "b/x.jpg": 4}


@settings(max_examples=300, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    seed=st.integers(0, 2**32 - 1),
    fill=st.sampled_from([0.0, 0.3, 1.0]),
    box=st.tuples(st.floats(-10, 40), st.floats(0, 40)),
    tight=st.booleans(),
)
def test_rle_from_the_box_band_equals_rle_of_the_whole_mask(shape, seed, fill, box, tight):
    """The column-band encoding is an optimisation only: counts are identical, whatever
    the box (tight, loose, wrong, outside the image)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    mask = np.zeros(shape, bool)
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    y1, x1 = rng.integers(y0, h + 1), rng.integers(x0, w + 1)
    mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < fill
    xyxy = np.array([box[0], 0, box[0] + box[1], 0], np.float32)
    if tight and mask.any():
        cols = np.flatnonzero(mask.any(axis=0))
        xyxy = np.array([cols[0], 0, cols[-1] + 1, 0], np.float32)
    whole = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encode_rle(mask, xyxy) == {"size": [h, w], "counts": whole["counts"].decode()}
