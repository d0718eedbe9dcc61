"""COCO evaluation: ground truth scores 1, the checks in front of COCOeval, per-class AP,
PR curves and the per-image counts behind the worst-images gallery."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import COCO_DIR as COCO_MINI
from helpers import needs_coco
from pycocotools import mask as mask_utils

from mrcnn_cli.detections import encode_rle
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.evaluation.coco_io import (
    GroundTruth,
    check_results,
    load_ground_truth,
    read_results_file,
    resolve_classes,
)
from mrcnn_cli.evaluation.metrics import (
    STAT_NAMES,
    ImageScore,
    evaluate_type,
    image_scores,
    pr_curve,
    worst_images,
)

# COCOeval's precision is tp / (tp + fp + eps): a perfect score is 1 - 2e-16, not 1.0.
ONE = pytest.approx(1.0, abs=1e-12)
ANN = COCO_MINI / "instances.json"


@pytest.fixture(scope="module")
def gt() -> GroundTruth:
    return load_ground_truth(ANN)


def gt_as_results(gt: GroundTruth) -> list[dict]:
    """Every non-crowd annotation as a score-1 detection (crowd regions are not objects)."""
    out = []
    for ann in gt.coco.dataset["annotations"]:
        if ann["iscrowd"]:
            continue
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": list(ann["bbox"]),
                "score": 1.0,
                "segmentation": encode_rle(gt.coco.annToMask(ann).astype(bool)),
            }
        )
    return out


@pytest.fixture(scope="module")
def perfect(gt: GroundTruth) -> list[dict]:
    return gt_as_results(gt)


def small_gt(tmp_path: Path, annotations: list[dict], name: str = "ann.json") -> GroundTruth:
    """A 2-image, 2-class annotation file (100x100 images) for the edge cases."""
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 100, "width": 100},
            {"id": 2, "file_name": "b.jpg", "height": 100, "width": 100},
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
        "annotations": annotations,
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return load_ground_truth(path)


def box_ann(ann_id: int, image_id: int, cat: int, box: list[float], segm: bool = True) -> dict:
    x, y, w, h = box
    ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": box,
           "area": w * h, "iscrowd": 0}  # fmt: skip
    if segm:
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return ann


def det(image_id: int, cat: int, box: list[float], score: float, **extra) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score, **extra}


# ----------------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@needs_coco
def test_ground_truth_as_results_scores_ap_1(gt: GroundTruth, perfect: list[dict], iou_type: str):
    checked = check_results(gt, perfect)
    result = evaluate_type(gt, checked.results, iou_type, gt.image_ids, gt.category_ids)
    stats = result.metrics.as_dict()
    assert (stats["AP"], stats["AP50"], stats["AP75"], stats["AR100"]) == (ONE, ONE, ONE, ONE)
    scored = [row for row in result.per_class if row.ap is not None]
    assert len(scored) == 77 and all(row.ap == ONE for row in scored)


@needs_coco
def test_per_class_counts_non_crowd_ground_truth_and_detections(gt, perfect):
    result = evaluate_type(gt, perfect, "bbox", gt.image_ids, gt.category_ids)
    rows = {row.name: row for row in result.per_class}
    assert rows["person"].gt_instances == 66  # 66 persons in the 50 images, none crowd
    assert sum(r.gt_instances for r in result.per_class) == 346  # 348 minus 2 crowd
    assert rows["person"].detections == 66
    assert rows["teddy bear"].gt_instances == 0 and rows["teddy bear"].ap is None


@needs_coco
def test_per_class_ap_is_sorted_best_first_with_unscored_classes_last(gt, perfect):
    results = [dict(r, score=0.9) for r in perfect]
    # Spoil the persons: every box shifted by half its width.
    for r in results:
        if r["category_id"] == 1:
            x, y, w, h = r["bbox"]
            r["bbox"] = [x + w / 2, y, w, h]
    rows = evaluate_type(gt, results, "bbox", gt.image_ids, gt.category_ids).per_class
    aps = [r.ap for r in rows if r.ap is not None]
    assert aps == sorted(aps, reverse=True)
    assert all(r.ap is None for r in rows[len(aps) :])
    assert rows[len(aps) - 1].name == "person"


def test_loader_fills_iscrowd_area_and_bbox_that_hand_made_files_leave_out(tmp_path):
    ann = {"image_id": 1, "category_id": 3, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]}
    gt = small_gt(tmp_path, [ann])
    filled = gt.coco.dataset["annotations"][0]
    assert filled["iscrowd"] == 0
    assert filled["bbox"] == pytest.approx([10, 10, 20, 10], abs=1)
    assert filled["area"] == pytest.approx(200, rel=0.2)
    result = evaluate_type(gt, [det(1, 3, filled["bbox"], 0.9)], "bbox", [1, 2], [3, 7])
    assert result.metrics.ap == ONE


def test_annotations_without_segmentation_make_segm_unavailable(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20], segm=False)])
    assert gt.segm_problem is not None and "no 'segmentation'" in gt.segm_problem


def test_annotations_with_segmentation_leave_segm_available(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    assert gt.segm_problem is None


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"images": [], "annotations": []}', "no 'categories' list"),
    ],
)
def test_broken_annotation_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(MrcnnError, match=message):
        load_ground_truth(path)


def test_missing_annotation_file_is_an_error(tmp_path):
    with pytest.raises(MrcnnError, match="not found"):
        load_ground_truth(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- classes
@needs_coco
def test_classes_resolve_by_name_case_insensitively_and_by_id(gt):
    assert resolve_classes(gt, ["Person", "3", "dog"]) == [1, 3, 18]


@needs_coco
def test_unknown_class_name_suggests_close_names(gt):
    with pytest.raises(MrcnnError, match="did you mean person"):
        resolve_classes(gt, ["persn"])


@needs_coco
def test_class_id_not_in_annotations_is_an_error(gt):
    with pytest.raises(MrcnnError, match="category id 12"):
        resolve_classes(gt, ["12"])  # a gap in COCO's ids


# ----------------------------------------------------------------------------- results
def test_results_file_may_be_a_list_or_an_annotations_object(tmp_path):
    entry = det(1, 3, [0, 0, 5, 5], 0.5)
    (tmp_path / "a.json").write_text(json.dumps([entry]))
    (tmp_path / "b.json").write_text(json.dumps({"annotations": [entry]}))
    assert read_results_file(tmp_path / "a.json") == read_results_file(tmp_path / "b.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"x": 1}', "expected a JSON list"),
        ('[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]', "#0 has no numeric 'score'"),
        ('[{"image_id": 1, "category_id": 3, "score": 0.5}]', "neither 'bbox' nor"),
        ('[{"image_id": 1, "category_id": 3, "score": 0.5, "bbox": [1, 2]}]', "not \\[x, y"),
    ],
)
def test_malformed_results_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "pred.json"
    path.write_text(content)
    with pytest.raises(MrcnnError, match=message):
        read_results_file(path)


def test_predictions_for_images_not_in_the_annotations_are_dropped_with_a_note(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    checked = check_results(gt, [det(1, 3, [10, 10, 20, 20], 0.9), det(99, 3, [0, 0, 5, 5], 0.8)])
    assert len(checked.results) == 1
    assert checked.unknown_image_ids == [99] and checked.dropped_unknown_images == 1
    assert any("not in the annotations (99)" in note for note in checked.notes())


def test_predictions_only_for_other_images_are_an_error(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    with pytest.raises(MrcnnError, match="another annotation file"):
        check_results(gt, [det(98, 3, [0, 0, 5, 5], 0.8), det(99, 3, [0, 0, 5, 5], 0.8)])


def test_predictions_with_unknown_category_ids_are_dropped_with_a_note(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    checked = check_results(gt, [det(1, 3, [10, 10, 20, 20], 0.9), det(1, 4, [0, 0, 5, 5], 0.8)])
    assert [r["category_id"] for r in checked.results] == [3]
    assert checked.unknown_category_ids == [4]
    assert any("category ids unknown" in note for note in checked.notes())


def test_predictions_with_only_unknown_category_ids_are_an_error_with_a_hint(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    with pytest.raises(MrcnnError, match="numbered differently"):
        check_results(gt, [det(1, 1, [0, 0, 5, 5], 0.8), det(2, 2, [0, 0, 5, 5], 0.8)])


def test_a_mask_of_the_wrong_size_makes_segm_unavailable(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    small = encode_rle(np.ones((50, 50), bool))
    checked = check_results(gt, [det(1, 3, [10, 10, 20, 20], 0.9, segmentation=small)])
    assert checked.segm_problem is not None and "differ in size" in checked.segm_problem


def test_boxes_only_predictions_make_segm_unavailable(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    checked = check_results(gt, [det(1, 3, [10, 10, 20, 20], 0.9)])
    assert "no 'segmentation'" in checked.segm_problem


def test_polygon_and_uncompressed_masks_score_like_compressed_rle(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    mask = np.zeros((100, 100), bool)
    mask[10:30, 10:30] = True
    rle = encode_rle(mask)
    polygon = [[10, 10, 30, 10, 30, 30, 10, 30]]
    raw = mask_utils.frPyObjects(polygon, 100, 100)[0]  # compressed bytes ...
    uncompressed = {"size": [100, 100], "counts": _uncompressed_counts(mask)}
    aps = []
    for segm in (rle, polygon, uncompressed, raw):
        checked = check_results(gt, [det(1, 3, [10, 10, 20, 20], 0.9, segmentation=segm)])
        assert checked.segm_problem is None
        aps.append(evaluate_type(gt, checked.results, "segm", [1, 2], [3, 7]).metrics.ap)
    assert aps == [ONE, ONE, ONE, ONE]


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def test_segm_sizes_detections_by_mask_area_even_when_a_box_is_given(tmp_path):
    """loadRes would take the box area: a thin diagonal false positive (mask 600 px, small;
    box 69x60, medium) would then be left out of APs and APs would read 1.0, not 0.5."""
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [70, 0, 20, 20])])
    square = np.zeros((100, 100), bool)
    square[0:20, 70:90] = True
    diagonal = np.zeros((100, 100), bool)
    for i in range(60):
        diagonal[20 + i, 20 + i : 30 + i] = True
    results = [
        det(1, 3, [70, 0, 20, 20], 0.5, segmentation=encode_rle(square)),
        det(1, 3, [20, 20, 69, 60], 0.9, segmentation=encode_rle(diagonal)),
    ]
    stats = evaluate_type(gt, results, "segm", [1, 2], [3, 7]).metrics.as_dict()
    assert stats["APs"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- empty results
@needs_coco
def test_empty_results_score_zero_wherever_there_is_ground_truth(gt):
    result = evaluate_type(gt, [], "segm", gt.image_ids, gt.category_ids)
    stats = result.metrics.as_dict()
    assert set(stats) == set(STAT_NAMES)
    assert all(v == 0.0 for v in stats.values())
    assert all(r.ap == 0.0 for r in result.per_class if r.gt_instances > 0)
    assert pr_curve(result.metrics.cocoeval, 0.5).max() == 0.0


def test_restricting_images_and_classes_with_no_ground_truth_gives_nan_not_zero(tmp_path):
    gt = small_gt(tmp_path, [box_ann(1, 1, 3, [10, 10, 20, 20])])
    result = evaluate_type(gt, [det(2, 7, [0, 0, 5, 5], 0.9)], "bbox", [2], [7])
    assert math.isnan(result.metrics.ap)  # COCOeval's -1: nothing to score against
    assert result.per_class[0].ap is None and result.per_class[0].detections == 1


# ----------------------------------------------------------------------------- curves
@needs_coco
def test_mean_of_the_iou_050_curve_is_ap50(gt, perfect):
    rng = np.random.default_rng(1)
    results = [dict(r, score=float(rng.random())) for r in perfect if rng.random() > 0.3]
    for r in results[::3]:
        x, y, w, h = r["bbox"]
        r["bbox"] = [x + 0.4 * w, y, w, h]
    ev = evaluate_type(gt, results, "bbox", gt.image_ids, gt.category_ids).metrics
    assert 0.2 < ev.stats[1] < 0.95
    assert pr_curve(ev.cocoeval, 0.5).mean() == pytest.approx(ev.stats[1], abs=1e-12)
    assert pr_curve(ev.cocoeval, None).mean() == pytest.approx(ev.stats[0], abs=1e-12)


@needs_coco
def test_class_curve_is_none_for_a_class_without_ground_truth(gt, perfect):
    ev = evaluate_type(gt, perfect, "bbox", gt.image_ids, gt.category_ids).metrics.cocoeval
    assert pr_curve(ev, 0.5, category_id=88) is None  # teddy bear: none in the set
    assert pr_curve(ev, 0.5, category_id=1).min() == ONE


# ----------------------------------------------------------------------------- per image
def test_image_scores_count_hits_false_positives_and_misses(tmp_path):
    gt = small_gt(
        tmp_path,
        [box_ann(1, 1, 3, [10, 10, 20, 20]), box_ann(2, 1, 7, [50, 50, 30, 30]),
         box_ann(3, 2, 3, [0, 0, 40, 40])],
    )  # fmt: skip
    results = [
        det(1, 3, [10, 10, 20, 20], 0.9),  # hit
        det(1, 3, [60, 0, 20, 20], 0.8),  # false positive
        det(1, 7, [50, 50, 30, 30], 0.3),  # a hit, but below the display score
        det(2, 3, [0, 0, 40, 40], 0.95),  # hit: image 2 is perfect
    ]
    ev = evaluate_type(gt, results, "bbox", [1, 2], [3, 7]).metrics.cocoeval
    scores = {s.image_id: s for s in image_scores(ev, iou=0.5, score_thr=0.5)}
    assert scores[1] == ImageScore(1, gt_instances=2, true_pos=1, false_pos=1)
    assert scores[1].missed == 1
    assert scores[2].f1 == 1.0
    assert worst_images(list(scores.values()), 5) == [scores[1]]


def test_worst_images_puts_lowest_f1_first():
    a = ImageScore(1, gt_instances=4, true_pos=3, false_pos=0)
    b = ImageScore(2, gt_instances=4, true_pos=0, false_pos=2)
    c = ImageScore(3, gt_instances=0, true_pos=0, false_pos=1)
    d = ImageScore(4, gt_instances=1, true_pos=1, false_pos=0)
    assert worst_images([a, b, c, d], 2) == [b, c]
    assert worst_images([a, b, c, d], 10) == [b, c, a]
