"""LabelMe JSON: polygons per part grouped by instance, imagePath relative to the JSON."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import dets_from_masks, rect_mask
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.labelme import (
    image_ref_from,
    labelme_path,
    labelme_record,
    write_labelme,
)

CLASS_NAMES = ("__background__", "person", "car")
CATEGORY_IDS = (0, 1, 3)
H, W = 40, 60


def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    return rect_mask(H, W, y0, y1, x0, x1)


def dets_of(masks: list[np.ndarray], labels: list[int], scores: list[float] | None = None):
    return dets_from_masks(masks, labels, CLASS_NAMES, CATEGORY_IDS, scores, (H, W))


def labelme_rasterise(points: list[list[float]], height: int, width: int) -> np.ndarray:
    """LabelMe's own rule (`shape_to_mask`): PIL polygon with outline and fill."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], outline=1, fill=1)
    return np.asarray(canvas).astype(bool)


def test_the_record_has_the_labelme_fields() -> None:
    record = labelme_record(dets_of([rect(5, 20, 5, 30)], [1]), "../img.jpg", H, W)
    assert set(record) == {
        "version",
        "flags",
        "shapes",
        "imagePath",
        "imageData",
        "imageHeight",
        "imageWidth",
    }
    assert record["imagePath"] == "../img.jpg" and record["imageData"] is None
    assert (record["imageHeight"], record["imageWidth"]) == (H, W)
    (shape,) = record["shapes"]
    assert shape["label"] == "person" and shape["shape_type"] == "polygon"
    assert shape["flags"] == {} and shape["group_id"] == 1
    assert all(len(p) == 2 and isinstance(p[0], float) for p in shape["points"])


def test_the_score_is_in_the_shape_description() -> None:
    record = labelme_record(dets_of([rect(5, 20, 5, 30)], [1], [0.87654]), "i.jpg", H, W)
    assert record["shapes"][0]["description"] == "score=0.8765"


def test_the_parts_of_one_instance_share_its_group_id() -> None:
    two_parts = rect(2, 10, 2, 10) | rect(25, 38, 30, 58)
    record = labelme_record(dets_of([rect(12, 20, 40, 50), two_parts], [2, 1]), "i.jpg", H, W)
    groups = [(s["label"], s["group_id"]) for s in record["shapes"]]
    assert groups == [("car", 1), ("person", 2), ("person", 2)]


def test_shapes_drawn_by_labelmes_rasteriser_give_back_the_masks() -> None:
    masks = [rect(2, 10, 2, 10) | rect(25, 38, 30, 58), rect(12, 20, 40, 50)]
    record = labelme_record(dets_of(masks, [1, 2]), "i.jpg", H, W)
    for k, mask in enumerate(masks, 1):
        shapes = [s for s in record["shapes"] if s["group_id"] == k]
        back = np.zeros((H, W), bool)
        for shape in shapes:
            back |= labelme_rasterise(shape["points"], H, W)
        np.testing.assert_array_equal(back, mask)


def test_real_coco_masks_survive_labelmes_rasteriser(coco_ann: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_ann))
    image_id = coco.getImgIds()[0]
    info = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
    h, w = info["height"], info["width"]
    dets = Detections(
        np.zeros((len(anns), 4)),
        [1.0] * len(anns),
        [1] * len(anns),
        masks,
        CLASS_NAMES,
        CATEGORY_IDS,
    )
    record = labelme_record(dets, info["file_name"], h, w)
    for k, mask in enumerate(masks, 1):
        back = np.zeros((h, w), bool)
        for shape in (s for s in record["shapes"] if s["group_id"] == k):
            back |= labelme_rasterise(shape["points"], h, w)
        assert (mask & back).sum() / (mask | back).sum() >= 0.95


def test_no_detections_give_an_empty_shape_list() -> None:
    assert labelme_record(dets_of([], []), "i.jpg", H, W)["shapes"] == []


def test_image_path_is_relative_to_the_json_folder(tmp_path: Path) -> None:
    image = tmp_path / "photos" / "day1" / "img.jpg"
    out_dir = tmp_path / "out"
    json_path = labelme_path(out_dir, "day1/img.jpg")
    ref = image_ref_from(json_path, image)
    assert ref == "../../../photos/day1/img.jpg"
    assert Path(os.path.normpath(json_path.parent / ref)) == image


def test_write_labelme_writes_json_that_points_at_the_image(tmp_path: Path) -> None:
    image = tmp_path / "in" / "a b" / "x.png"
    path = write_labelme(
        tmp_path / "out", "a b/x.png", image, dets_of([rect(5, 20, 5, 30)], [1]), H, W
    )
    assert path == tmp_path / "out" / "labelme" / "a b" / "x.json"
    data = json.loads(path.read_text())
    assert Path(os.path.normpath(path.parent / data["imagePath"])) == image
    assert len(data["shapes"]) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"], "no temp file left"


def test_detections_without_masks_are_refused() -> None:
    dets = Detections([[0, 0, 5, 5]], [0.9], [1], None, CLASS_NAMES, CATEGORY_IDS)
    with pytest.raises(ValueError, match="mask"):
        labelme_record(dets, "i.jpg", H, W)
