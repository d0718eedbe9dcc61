"""`mrcnn eval` end to end: its numbers are pycocotools' numbers, and every problem a
user runs into is reported (exit 0, 1 or 2) instead of crashing."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import COCO_DIR as COCO_MINI
from helpers import needs_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from mrcnn_cli.cli import app
from mrcnn_cli.detections import encode_rle
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.evaluation.metrics import STAT_NAMES

ANN = COCO_MINI / "instances.json"
IMAGES = COCO_MINI / "images"
FAST = ["--no-plots", "--gallery", "0"]


def quiet_gt() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ANN))


@pytest.fixture(scope="module")
def gt() -> COCO:
    return quiet_gt()


def perturbed_results(gt: COCO, seed: int = 0) -> list[dict]:
    """Ground truth made imperfect: ~20% dropped, boxes shifted, ~30% of masks eroded,
    random scores, and some shifted duplicates as false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.2:
            continue
        mask = gt.annToMask(ann)
        if rng.random() < 0.3:
            mask = cv2.erode(mask, np.ones((5, 5), np.uint8))
        x, y, w, h = ann["bbox"]
        dx, dy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
        entry = {
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "bbox": [round(x + dx, 2), round(y + dy, 2), round(w, 2), round(h, 2)],
            "score": round(float(rng.random()), 5),
            "segmentation": encode_rle(mask.astype(bool)),
        }
        out.append(entry)
        if rng.random() < 0.15:
            shifted = np.roll(mask, int(w / 2) + 1, axis=1).astype(bool)
            dup = dict(entry, score=round(float(rng.random()) * 0.5, 5))
            dup["bbox"] = [round(x + w / 2, 2), round(y, 2), round(w, 2), round(h, 2)]
            dup["segmentation"] = encode_rle(shifted)
            out.append(dup)
    return out


def direct_stats(
    results: list[dict], iou_type: str, img_ids: list[int] | None = None, cat_ids=None
) -> list[float | None]:
    """A plain pycocotools evaluation, written the textbook way, -1 as None.

    For segm the boxes are left out of the results (as detectron2 and torchvision do),
    so that COCO's size buckets use the mask area.
    """
    gt = quiet_gt()
    entries = copy.deepcopy(results)
    if iou_type == "segm":
        for e in entries:
            e.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(entries), iou_type)
        if img_ids is not None:
            ev.params.imgIds = img_ids
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [None if s == -1 else float(s) for s in ev.stats]


def stats_of(doc: dict, iou_type: str) -> list[float | None]:
    return [doc["metrics"][iou_type]["stats"][name] for name in STAT_NAMES]


def mrcnn(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def pred_file(gt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pred") / "predictions.json"
    path.write_text(json.dumps(perturbed_results(gt)))
    return path


@pytest.fixture(scope="module")
def full_run(pred_file, tmp_path_factory):
    """One complete run (both types, plots, gallery of 3) shared by the report tests."""
    out = tmp_path_factory.mktemp("full")
    stale = out / "worst" / "09_1_old.jpg"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    result = mrcnn("eval", "--pred", pred_file, "--ann", ANN, "--images", IMAGES, "-o", out,
                   "--gallery", "3")  # fmt: skip
    return result, out, json.loads((out / "metrics.json").read_text())


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@needs_coco
def test_perturbed_results_give_exactly_a_direct_pycocotools_call(full_run, pred_file, iou_type):
    result, _, doc = full_run
    assert result.exit_code == 0, result.output
    expected = direct_stats(json.loads(pred_file.read_text()), iou_type)
    assert 0.2 < expected[0] < 0.9  # really imperfect, really scored
    assert stats_of(doc, iou_type) == expected


@pytest.mark.parametrize("iou_type, name, cat_id", [("bbox", "person", 1), ("segm", "bottle", 44)])
@needs_coco
def test_per_class_ap_equals_a_direct_call_restricted_to_that_class(
    full_run, pred_file, iou_type, name, cat_id
):
    _, _, doc = full_run
    row = next(r for r in doc["metrics"][iou_type]["per_class"] if r["name"] == name)
    direct = direct_stats(json.loads(pred_file.read_text()), iou_type, cat_ids=[cat_id])
    assert (row["AP"], row["AP50"], row["AP75"]) == pytest.approx(direct[:3], abs=1e-12)


@needs_coco
def test_classes_option_matches_a_direct_call_with_those_category_ids(pred_file, tmp_path):
    result = mrcnn("eval", "--pred", pred_file, "--ann", ANN, "-o", tmp_path, "--iou-type",
                   "bbox", "--classes", "person,dog", "--json", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["categories"] == [1, 18]
    rows = doc["metrics"]["bbox"]["per_class"]
    assert {r["name"] for r in rows} == {"person", "dog"}
    assert rows[0]["AP"] >= rows[1]["AP"]
    expected = direct_stats(json.loads(pred_file.read_text()), "bbox", cat_ids=[1, 18])
    assert stats_of(doc, "bbox") == expected


@needs_coco
def test_max_images_evaluates_the_first_n_annotated_images(gt, pred_file, tmp_path):
    result = mrcnn("eval", "--pred", pred_file, "--ann", ANN, "-o", tmp_path, "--iou-type",
                   "segm", "--max-images", "10", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "metrics.json").read_text())
    first = [im["id"] for im in gt.dataset["images"][:10]]
    assert doc["images"]["evaluated"] == 10
    assert stats_of(doc, "segm") == direct_stats(json.loads(pred_file.read_text()), "segm", first)


# ----------------------------------------------------------------------------- report
@needs_coco
def test_tables_show_the_12_numbers_for_each_type_and_the_per_class_ap(full_run):
    result, _, _ = full_run
    out = result.stdout
    assert "COCO metrics" in out and "Per-class AP (sorted by segm AP)" in out
    for name in STAT_NAMES:
        assert f" {name} " in out
    assert "bbox AP50" in out and "segm AP75" in out
    assert "person" in out and "teddy bear" not in out  # no ground truth: no row


@needs_coco
def test_metrics_json_holds_every_number_and_the_context(full_run, gt):
    _, _, doc = full_run
    assert doc["iou_types"] == ["bbox", "segm"]
    assert doc["images"] == {"annotated": 50, "evaluated": 50, "missing": []}
    per_class = doc["metrics"]["segm"]["per_class"]
    assert len(per_class) == len(gt.getCatIds())  # every category, with or without GT
    assert sum(r["gt_instances"] for r in per_class) == 346


@needs_coco
def test_pr_curve_pngs_are_written_per_type(full_run):
    _, out, doc = full_run
    for iou_type in ("bbox", "segm"):
        for name in (f"pr_{iou_type}.png", f"pr_{iou_type}_classes.png"):
            image = cv2.imread(str(out / name))
            assert image is not None and image.shape[0] > 300
            assert name in doc["files"]


@needs_coco
def test_gallery_shows_the_worst_images_side_by_side_and_replaces_old_ones(full_run, gt):
    _, out, doc = full_run
    pictures = sorted((out / "worst").iterdir())
    assert [p.name[:3] for p in pictures] == ["01_", "02_", "03_"]  # stale 09_ removed
    for picture in pictures:
        image_id = int(picture.name.split("_")[1])
        info = gt.imgs[image_id]
        image = cv2.imread(str(picture))
        assert image.shape[1] == 2 * info["width"] + 8  # prediction | gap | ground truth
        assert f"worst/{picture.name}" in doc["files"]


@needs_coco
def test_json_prints_the_metrics_document_instead_of_tables(pred_file, tmp_path):
    result = mrcnn("eval", "--pred", pred_file, "--ann", ANN, "-o", tmp_path, "--json",
                   "--iou-type", "bbox", *FAST)  # fmt: skip
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads((tmp_path / "metrics.json").read_text())


@needs_coco
def test_quiet_prints_nothing_and_still_writes_metrics(pred_file, tmp_path):
    result = mrcnn("eval", "--pred", pred_file, "--ann", ANN, "-o", tmp_path, "--quiet",
                   "--iou-type", "bbox", *FAST)  # fmt: skip
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "metrics.json").is_file()


# ----------------------------------------------------------------------------- user errors
@needs_coco
def test_missing_image_files_are_listed_the_rest_evaluated_exit_1(gt, pred_file, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    names = [im["file_name"] for im in gt.dataset["images"]]
    gone = names[:2]
    for name in names[2:]:
        (folder / name).symlink_to(IMAGES / name)
    result = mrcnn("eval", "--pred", pred_file, "--ann", ANN, "--images", folder, "-o",
                   tmp_path / "out", "--iou-type", "bbox", *FAST)  # fmt: skip
    assert result.exit_code == 1
    assert "2 image file(s) missing" in result.stderr
    assert all(name in result.stderr for name in gone)
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["images"]["evaluated"] == 48
    assert [Path(m["path"]).name for m in doc["images"]["missing"]] == gone
    present = [im["id"] for im in gt.dataset["images"][2:]]
    assert stats_of(doc, "bbox") == direct_stats(json.loads(pred_file.read_text()), "bbox", present)


@needs_coco
def test_empty_predictions_file_reports_ap_zero_not_a_crash(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = mrcnn("eval", "--pred", empty, "--ann", ANN, "-o", tmp_path, "--json", *FAST)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for iou_type in ("bbox", "segm"):
        assert doc["metrics"][iou_type]["stats"]["AP"] == 0.0
        assert doc["metrics"][iou_type]["stats"]["AR100"] == 0.0
    assert "no predictions" in result.stderr


@needs_coco
def test_annotations_without_segmentation_skip_segm_with_a_message(pred_file, tmp_path):
    data = json.loads(ANN.read_text())
    for ann in data["annotations"]:
        ann.pop("segmentation")
    boxes_only = tmp_path / "boxes.json"
    boxes_only.write_text(json.dumps(data))
    result = mrcnn("eval", "--pred", pred_file, "--ann", boxes_only, "-o", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    assert "segm skipped" in result.stderr and "no 'segmentation'" in result.stderr
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["iou_types"] == ["bbox"] and "segm" in doc["skipped"]
    assert stats_of(doc, "bbox") == direct_stats(json.loads(pred_file.read_text()), "bbox")


@needs_coco
def test_asking_only_for_segm_without_segmentation_is_exit_2(pred_file, tmp_path):
    data = json.loads(ANN.read_text())
    for ann in data["annotations"]:
        ann.pop("segmentation")
    boxes_only = tmp_path / "boxes.json"
    boxes_only.write_text(json.dumps(data))
    result = mrcnn("eval", "--pred", pred_file, "--ann", boxes_only, "-o", tmp_path,
                   "--iou-type", "segm", *FAST)  # fmt: skip
    assert result.exit_code == 2
    assert "cannot evaluate segm" in result.stderr


@needs_coco
def test_predictions_for_unknown_images_are_reported_and_ignored(pred_file, tmp_path):
    results = json.loads(pred_file.read_text())
    strays = [dict(r, image_id=123456789) for r in results[:4]]
    with_strays = tmp_path / "strays.json"
    with_strays.write_text(json.dumps(results + strays))
    result = mrcnn("eval", "--pred", with_strays, "--ann", ANN, "-o", tmp_path, "--iou-type",
                   "bbox", *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 predictions are for 1 image ids not in the annotations (123456789)" in result.stderr
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["detections"]["unknown_image_ids"] == [123456789]
    assert stats_of(doc, "bbox") == direct_stats(results, "bbox")


@needs_coco
def test_unknown_category_ids_are_reported_and_ignored(pred_file, tmp_path):
    results = json.loads(pred_file.read_text())
    strays = [dict(r, category_id=12) for r in results[:3]]  # 12: a gap in COCO's ids
    path = tmp_path / "strays.json"
    path.write_text(json.dumps(results + strays))
    result = mrcnn("eval", "--pred", path, "--ann", ANN, "-o", tmp_path, "--iou-type", "bbox",
                   *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 predictions have category ids unknown to the annotations (12)" in result.stderr
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert stats_of(doc, "bbox") == direct_stats(results, "bbox")


@needs_coco
def test_predictions_numbered_from_another_label_set_are_exit_2(pred_file, tmp_path):
    results = [
        dict(r, category_id=200 + r["category_id"]) for r in json.loads(pred_file.read_text())
    ]
    path = tmp_path / "shifted.json"
    path.write_text(json.dumps(results))
    result = mrcnn("eval", "--pred", path, "--ann", ANN, "-o", tmp_path, *FAST)
    assert result.exit_code == 2
    assert "numbered differently" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to evaluate"),
        (["--pred", "{pred}", "--model", "maskrcnn_resnet50_fpn"], "--model does not apply"),
        (["--pred", "{pred}", "--iou-type", "mask"], "--iou-type must be"),
        (["--pred", "{pred}", "--classes", "persn"], "did you mean person"),
        (["--pred", "{tmp}/nope.json"], "predictions file not found"),
        (["--images", "{tmp}/nowhere"], "no such folder"),
    ],
)
@needs_coco
def test_usage_errors_are_one_line_and_exit_2(pred_file, tmp_path, args, message):
    args = [a.format(pred=pred_file, tmp=tmp_path) for a in args]
    result = mrcnn("eval", "--ann", ANN, "-o", tmp_path / "out", *args, *FAST)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- model mode
@needs_coco
def test_roi_op_is_passed_to_the_model_loader(monkeypatch, tmp_path):
    import mrcnn_cli.segmenter as segmenter

    seen = {}

    def fake_load_model(spec, weights, device, precision, roi_op, overrides, seed):
        seen.update(spec=spec, roi_op=roi_op, overrides=overrides)
        raise MrcnnError("stop here")

    monkeypatch.setattr(segmenter, "load_model", fake_load_model)
    result = mrcnn("eval", "--images", IMAGES, "--ann", ANN, "-o", tmp_path, "--roi-op", "pool",
                   "--max-images", "1", *FAST)  # fmt: skip
    assert result.exit_code == 2 and "stop here" in result.stderr
    assert seen == {
        "spec": "maskrcnn_resnet50_fpn",
        "roi_op": "pool",
        "overrides": {"box_score_thresh": 0.05, "box_detections_per_img": 100},
    }


@needs_coco
def test_model_mode_equals_segment_then_eval_pred(gt, tmp_path):
    """Same model, same images: running it inside eval or via `segment --save coco`
    gives the same predictions and so the same numbers (seeded random weights: the AP is
    near 0, but every detection must agree; one image keeps the test fast)."""
    model = ["--model", "maskrcnn_resnet18_fpn_lite", "--random-weights", "3", "--device",
             "cpu", "--score-thr", "0.001"]  # fmt: skip
    first = gt.dataset["images"][0]
    seg = mrcnn("segment", IMAGES / first["file_name"], "--ann", ANN, "-o", tmp_path / "seg",
                "--save", "coco", "--quiet", *model)  # fmt: skip
    assert seg.exit_code == 0, seg.output
    via_pred = mrcnn("eval", "--pred", tmp_path / "seg" / "predictions.json", "--ann", ANN,
                     "--max-images", "1", "-o", tmp_path / "a", "--json", *FAST)  # fmt: skip
    via_model = mrcnn("eval", "--images", IMAGES, "--ann", ANN, "--max-images", "1",
                      "-o", tmp_path / "b", "--json", *model, *FAST)  # fmt: skip
    assert via_pred.exit_code == 0 and via_model.exit_code == 0, via_model.output
    a, b = json.loads(via_pred.stdout), json.loads(via_model.stdout)
    predictions = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert len(predictions) > 20
    assert predictions == json.loads((tmp_path / "seg" / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} == {first["id"]}
    assert a["metrics"] == b["metrics"] and a["detections"] == b["detections"]
    assert b["mode"] == "model" and b["model"]["score_thr"] == 0.001


def test_the_gallery_enlarges_small_images_so_labels_stay_readable():
    from mrcnn_cli.detections import Detections
    from mrcnn_cli.evaluation.gallery import enlarged

    image = np.zeros((128, 96, 3), np.uint8)
    mask = np.zeros((1, 128, 96), bool)
    mask[0, 10:20, 30:40] = True
    dets = Detections([[30, 10, 40, 20]], [0.9], [1], mask, ("bg", "a"), (0, 1))
    big, big_dets = enlarged(image, dets)
    assert big.shape == (512, 384, 3)
    np.testing.assert_array_equal(big_dets.boxes, [[120, 40, 160, 80]])
    assert big_dets.masks.shape == (1, 512, 384) and big_dets.masks.sum() == 16 * mask.sum()
    photo = np.zeros((333, 500, 3), np.uint8)
    assert enlarged(photo, dets[np.zeros(1, bool)])[0] is photo
