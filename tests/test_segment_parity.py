"""`mrcnn segment` writes exactly what a plain torchvision forward pass predicts.

No COCO checkpoint exists offline, so both sides use the same seeded random weights
(`--random-weights SEED` vs `torch.manual_seed(SEED)` + torchvision's builder) with the
score threshold at 0, which gives plenty of overlapping detections. What is compared is
what segment WROTE: predictions.json (boxes, labels, scores, RLE masks), the 16-bit
instance PNG and the overlay, run through the CLI.

Batching pads every image to the batch's largest size, which changes the features near
the padded edges, so a batched run is compared with torchvision run on the same batch.

Cost: each configuration runs once (module-scoped fixtures), 8 ResNet-50 image forwards
in all; `--max-det 20` keeps the mask head and pasting small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import COCO_ANN, COCO_IMAGES, invoke_cli, needs_coco
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

pytestmark = pytest.mark.slow  # R50 forward passes on real images

SEED = 7
MAX_DET = 20
# Two landscape photos of different sizes; resized to 800 px high they are 1202 and 1067
# wide, so in a batch B is padded to A's width.
IMAGE_A = COCO_IMAGES / "000000000139.jpg"  # 426 x 640
IMAGE_B = COCO_IMAGES / "000000018575.jpg"  # 480 x 640


@dataclass
class Reference:
    """torchvision's output for one image, as numpy (masks thresholded at 0.5)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


@dataclass
class Case:
    """One segment run and torchvision's output for the same images."""

    out: Path
    images: list[Path]
    references: list[Reference]
    summary: dict


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def reference_model(builder) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = builder(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        box_score_thresh=0.0,
        box_detections_per_img=MAX_DET,
    )
    return model.eval()


@torch.inference_mode()
def torchvision_outputs(model, images: list[Path], batched: bool) -> list[Reference]:
    tensors = [torch.from_numpy(read_rgb(p)).permute(2, 0, 1).float() / 255 for p in images]
    outputs = model(tensors) if batched else [model([t])[0] for t in tensors]
    return [
        Reference(
            boxes=o["boxes"].numpy(),
            labels=o["labels"].numpy(),
            scores=o["scores"].numpy(),
            masks=(o["masks"][:, 0] > 0.5).numpy(),
        )
        for o in outputs
    ]


def run_segment(out: Path, images: list[Path], model: str, batch_size: int, *extra) -> dict:
    result = invoke_cli(
        [
            "segment",
            *images,
            "--out",
            out,
            "--model",
            model,
            "--random-weights",
            SEED,
            "--score-thr",
            "0",
            "--max-det",
            MAX_DET,
            "--batch-size",
            batch_size,
            "--device",
            "cpu",
            "--save",
            "overlay,masks,coco",
            "--json",
            "--backend",
            "torch",  # the exact path; OpenVINO is compared within tolerances elsewhere
            *extra,
        ]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def v1_model():
    return reference_model(maskrcnn_resnet50_fpn)


@pytest.fixture(scope="module")
def v1_batch1(tmp_path_factory, v1_model) -> Case:
    images = [IMAGE_B]
    out = tmp_path_factory.mktemp("v1_batch1")
    summary = run_segment(out, images, "maskrcnn_resnet50_fpn", 1)
    return Case(out, images, torchvision_outputs(v1_model, images, batched=False), summary)


@pytest.fixture(scope="module")
def v1_batch2(tmp_path_factory, v1_model) -> Case:
    """Also run with --ann, so its JSON is the one checked against COCOeval."""
    images = [IMAGE_A, IMAGE_B]
    out = tmp_path_factory.mktemp("v1_batch2")
    summary = run_segment(out, images, "maskrcnn_resnet50_fpn", 2, "--ann", COCO_ANN)
    return Case(out, images, torchvision_outputs(v1_model, images, batched=True), summary)


@pytest.fixture(scope="module")
def v2_batch1(tmp_path_factory) -> Case:
    images = [IMAGE_A]
    out = tmp_path_factory.mktemp("v2_batch1")
    summary = run_segment(out, images, "maskrcnn_resnet50_fpn_v2", 1)
    model = reference_model(maskrcnn_resnet50_fpn_v2)
    return Case(out, images, torchvision_outputs(model, images, batched=False), summary)


CASES = ["v1_batch1", "v1_batch2", "v2_batch1"]


@pytest.fixture(params=CASES)
def case(request) -> Case:
    return request.getfixturevalue(request.param)


# --- reading back what segment wrote ----------------------------------------------


def written_images(case: Case) -> list[dict]:
    """images.json entries in input order."""
    entries = json.loads((case.out / "images.json").read_text())
    by_name = {e["file_name"]: e for e in entries}
    return [by_name[p.name] for p in case.images]


def written_predictions(case: Case) -> list[list[dict]]:
    """predictions.json entries per input image, in file order."""
    predictions = json.loads((case.out / "predictions.json").read_text())
    return [[p for p in predictions if p["image_id"] == e["id"]] for e in written_images(case)]


def decode_rle(entry: dict) -> np.ndarray:
    rle = {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"]}
    rle["counts"] = rle["counts"].encode()
    return mask_utils.decode(rle).astype(bool)


def read_instance_png(case: Case, image: Path) -> np.ndarray:
    id_map = cv2.imread(str(case.out / "masks" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
    assert id_map is not None and id_map.dtype == np.uint16
    return id_map


def paint_by_score(masks) -> np.ndarray:
    """The id map the overlap rule asks for: instance k (1-based), higher scores on top."""
    masks = list(masks)
    out = np.zeros(masks[0].shape, np.uint16)
    for k in range(len(masks), 0, -1):  # lowest score first, so the best ends on top
        out[masks[k - 1]] = k
    return out


# --- parity ------------------------------------------------------------------------


@needs_coco
def test_random_weights_give_full_sets_of_overlapping_detections(case):
    """Guards the comparisons below against passing on empty output."""
    for ref in case.references:
        assert len(ref.scores) == MAX_DET
        assert ref.masks.reshape(MAX_DET, -1).any(axis=1).sum() >= MAX_DET // 2
        assert (ref.masks.sum(axis=0) > 1).any(), "no overlaps: the PNG rule goes untested"
        assert np.all(np.diff(ref.scores) <= 0), "torchvision returns detections by score"


@needs_coco
def test_written_labels_and_scores_equal_torchvision(case):
    for ref, entries in zip(case.references, written_predictions(case), strict=True):
        assert [e["category_id"] for e in entries] == ref.labels.tolist()
        scores = np.array([e["score"] for e in entries])
        np.testing.assert_allclose(scores, ref.scores, rtol=0, atol=1e-5)


@needs_coco
def test_written_boxes_equal_torchvision_boxes_as_xywh(case):
    for ref, entries in zip(case.references, written_predictions(case), strict=True):
        x0, y0, x1, y1 = ref.boxes.astype(np.float64).T
        expected = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
        written = np.array([e["bbox"] for e in entries])
        np.testing.assert_allclose(written, expected, rtol=0, atol=1e-2)


@needs_coco
def test_written_rle_masks_equal_torchvision_masks_exactly(case):
    for ref, entries in zip(case.references, written_predictions(case), strict=True):
        assert len(entries) == len(ref.masks)
        for k, (entry, expected) in enumerate(zip(entries, ref.masks, strict=True)):
            decoded = decode_rle(entry)
            assert decoded.shape == expected.shape
            assert np.array_equal(decoded, expected), f"mask {k} differs"


@needs_coco
def test_instance_png_is_torchvision_masks_with_higher_scores_on_top(case):
    for image, ref in zip(case.images, case.references, strict=True):
        np.testing.assert_array_equal(read_instance_png(case, image), paint_by_score(ref.masks))


@needs_coco
def test_batched_torchvision_output_is_not_the_single_image_output(v1_batch1, v1_batch2):
    """Why batched runs need a batched reference: B is padded to A's width in the batch."""
    single, batched = v1_batch1.references[0], v1_batch2.references[1]
    assert not np.array_equal(single.scores, batched.scores)


# --- the files themselves ----------------------------------------------------------


@needs_coco
def test_instance_png_decodes_to_exactly_the_instances_in_the_json(case):
    for image, entries in zip(case.images, written_predictions(case), strict=True):
        expected = paint_by_score(decode_rle(e) for e in entries)
        np.testing.assert_array_equal(read_instance_png(case, image), expected)


@needs_coco
def test_overlays_have_the_input_size(case):
    for image in case.images:
        overlay = cv2.imread(str(case.out / "overlays" / f"{image.stem}.jpg"))
        assert overlay is not None
        assert overlay.shape == read_rgb(image).shape


@needs_coco
def test_images_json_records_each_input_with_its_size(case):
    for image, entry in zip(case.images, written_images(case), strict=True):
        height, width = read_rgb(image).shape[:2]
        assert (entry["width"], entry["height"]) == (width, height)


@needs_coco
def test_json_summary_counts_images_and_detections(case):
    assert case.summary["processed"] == len(case.images)
    assert case.summary["failed"] == 0 and case.summary["skipped"] == 0
    assert case.summary["detections"] == MAX_DET * len(case.images)


@needs_coco
def test_image_ids_come_from_the_annotation_file(v1_batch2):
    annotations = json.loads(COCO_ANN.read_text())
    ids = {im["file_name"]: im["id"] for im in annotations["images"]}
    for image, entry in zip(v1_batch2.images, written_images(v1_batch2), strict=True):
        assert entry["id"] == ids[image.name]
    predictions = json.loads((v1_batch2.out / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} == {ids[p.name] for p in v1_batch2.images}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@needs_coco
def test_predictions_pass_coco_loadres_and_cocoeval(v1_batch2, iou_type):
    gt = COCO(str(COCO_ANN))
    predictions = json.loads((v1_batch2.out / "predictions.json").read_text())
    dt = gt.loadRes(str(v1_batch2.out / "predictions.json"))
    assert len(dt.getAnnIds()) == len(predictions) == 2 * MAX_DET
    evaluator = COCOeval(gt, dt, iou_type)
    evaluator.params.imgIds = sorted({p["image_id"] for p in predictions})
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert len(evaluator.stats) == 12
    assert np.all(np.isfinite(evaluator.stats))
    assert len(evaluator.evalImgs) > 0
