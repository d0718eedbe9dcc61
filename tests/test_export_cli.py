"""`mrcnn segment --save yolo,labelme,cvat,csv,crops` and `--tile` end to end (demo model)."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLES, invoke_cli, json_summary

from mrcnn_cli import Segmenter
from mrcnn_cli.decode import decode_image
from mrcnn_cli.train.mosaic import mosaic_scene

ALL_KINDS = "overlay,masks,coco,yolo,labelme,cvat,csv,crops"
DEMO = ["--model", "demo", "--device", "cpu"]


@pytest.fixture(scope="module")
def export_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    result = invoke_cli(["segment", EXAMPLES / "images", "-o", out, *DEMO, "--save", ALL_KINDS,
                         "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def predictions(out: Path) -> list[dict]:
    return json.loads((out / "predictions.json").read_text())


def test_every_format_is_written_for_every_image(export_run):
    stems = sorted(p.stem for p in (EXAMPLES / "images").glob("*.png"))
    assert sorted(p.stem for p in (export_run / "yolo" / "labels").glob("*.txt")) == stems
    assert sorted(p.stem for p in (export_run / "labelme").glob("*.json")) == stems
    assert sorted(p.name for p in (export_run / "crops").iterdir()) == stems
    for name in ("cvat.xml", "objects.csv", "yolo/data.yaml", "predictions.json"):
        assert (export_run / name).is_file(), name


def test_csv_rows_are_the_coco_predictions(export_run):
    with open(export_run / "objects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    preds = predictions(export_run)
    assert len(rows) == len(preds) > 0
    for row, pred in zip(rows, preds):
        assert int(row["image_id"]) == pred["image_id"]
        assert int(row["category_id"]) == pred["category_id"]
        assert float(row["score"]) == pytest.approx(pred["score"], abs=1e-4)
        box = [float(row[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
        assert box == pytest.approx(pred["bbox"], abs=0.01)


def test_cvat_xml_has_one_image_per_input_and_a_polygon_per_detection_part(export_run):
    root = ET.parse(export_run / "cvat.xml").getroot()
    images = root.findall("image")
    assert len(images) == 6
    labels = [e.text for e in root.iter("label") for e in e.findall("name")]
    assert set(labels) == {"circle", "square", "triangle"}
    assert sum(len(im.findall("polygon")) for im in images) >= len(predictions(export_run))


def test_yolo_labels_have_one_line_per_detection_with_normalised_points(export_run):
    lines = [
        line
        for path in sorted((export_run / "yolo" / "labels").glob("*.txt"))
        for line in path.read_text().splitlines()
    ]
    assert len(lines) == len(predictions(export_run))
    for line in lines:
        cls, *coords = line.split()
        assert int(cls) in (0, 1, 2) and len(coords) >= 6 and len(coords) % 2 == 0
        assert all(0.0 <= float(c) <= 1.0 for c in coords)


def test_labelme_json_points_to_its_image(export_run):
    doc = json.loads((export_run / "labelme" / "000000.json").read_text())
    image = (export_run / "labelme" / doc["imagePath"]).resolve()
    assert image == (EXAMPLES / "images" / "000000.png").resolve()
    assert doc["imageData"] is None and doc["shapes"]


def test_a_rerun_skips_every_image_and_rewrites_identical_run_files(export_run):
    before = {n: (export_run / n).read_bytes() for n in ("cvat.xml", "objects.csv")}
    result = invoke_cli(["segment", EXAMPLES / "images", "-o", export_run, *DEMO,
                         "--save", ALL_KINDS, "--json", "--quiet"])  # fmt: skip
    assert json_summary(result)["skipped"] == 6
    assert {n: (export_run / n).read_bytes() for n in before} == before


def test_videos_in_a_segment_run_get_only_the_kinds_videos_have(tmp_path):
    from mrcnn_cli.config import SegmentConfig

    cfg = SegmentConfig(("x",), tmp_path, save=("overlay", "csv", "crops", "coco"))
    assert cfg.video_config().save == ("video", "coco")


# --- tiling through the CLI and the Segmenter ------------------------------------------------
@pytest.fixture(scope="module")
def mosaic(tmp_path_factory) -> Path:
    image, _ = mosaic_scene(seed=3, index=0, grid=3)
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.png"
    import cv2

    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def found(instances, dets) -> int:
    """Ground-truth objects matched by a detection mask with IoU >= 0.5."""
    count = 0
    for inst in instances:
        inter = (dets.masks & inst.mask).sum(axis=(1, 2))
        union = (dets.masks | inst.mask).sum(axis=(1, 2))
        count += bool(len(dets)) and float((inter / np.maximum(union, 1)).max()) >= 0.5
    return count


def test_tiles_find_the_small_objects_the_whole_image_misses():
    image, instances = mosaic_scene(seed=3, index=0, grid=3)
    whole = Segmenter("demo", device="cpu")(image)
    tiled = Segmenter("demo", device="cpu", tile=128)(image)
    assert found(instances, tiled) >= 0.8 * len(instances)
    assert found(instances, tiled) >= found(instances, whole) + len(instances) // 2


def test_the_cli_writes_what_a_tiled_segmenter_returns(mosaic, tmp_path):
    result = invoke_cli(["segment", mosaic, "-o", tmp_path, *DEMO, "--tile", "128",
                         "--tile-overlap", "0.25", "--save", "coco", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    seg = Segmenter("demo", device="cpu", tile=128, tile_overlap=0.25)
    assert seg(decode_image(mosaic)).to_coco(1) == predictions(tmp_path)


def test_tile_settings_are_part_of_the_settings_that_decide_what_is_redone(mosaic, tmp_path):
    args = ["segment", mosaic, "-o", tmp_path, *DEMO, "--json", "--quiet"]
    invoke_cli([*args, "--tile", "128"])
    assert json_summary(invoke_cli([*args, "--tile", "128"]))["skipped"] == 1
    assert json_summary(invoke_cli([*args, "--tile", "160"]))["processed"] == 1


def test_tile_full_without_tile_is_a_usage_error(mosaic, tmp_path):
    result = invoke_cli(["segment", mosaic, "-o", tmp_path, *DEMO, "--tile-full"])
    assert result.exit_code == 2 and "give --tile SIZE" in result.stderr


def test_a_tiled_image_keeps_the_image_frame(mosaic):
    image = decode_image(mosaic)
    dets = Segmenter("demo", device="cpu", tile=128)(image)
    assert dets.masks.shape[1:] == image.shape[:2]
    assert len(dets) and (dets.boxes[:, 2] <= image.shape[1]).all()
    assert np.all(dets.masks.any(axis=(1, 2)))


def test_csv_and_cvat_together_decode_each_image_once(tmp_path, monkeypatch):
    from mrcnn_cli.detections import Detections

    calls = []
    real = Detections.from_coco.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Detections, "from_coco", classmethod(counting))
    result = invoke_cli(["segment", EXAMPLES / "images", "-o", tmp_path, *DEMO,
                         "--save", "csv,cvat", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(calls) == 6
    assert (tmp_path / "objects.csv").is_file() and (tmp_path / "cvat.xml").is_file()
