"""Every export read by the labelling tools' own readers (`pip install -e ".[interop]"`):
Datumaro (CVAT's dataset library: `coco_instances` and `cvat` importers), Ultralytics
(`check_det_dataset`, `verify_image_label`), label-studio-sdk
(`LabelInterface.validate_prediction`), pycocotools, and LabelMe's `LabelFile` where it
imports without a display. Each test skips, saying which package it needs, without it.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import invoke_cli, tiny_scene_tree

SAVE = "coco,coco-dataset,yolo,labelme,cvat,labelstudio"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The tiny scenes plus names and encodings a real folder has: a space and an
    upper-case suffix on an EXIF-rotated JPEG, non-ASCII and `#` on a grayscale PNG."""
    from PIL import Image

    images = tiny_scene_tree(tmp_path_factory.mktemp("interop"))
    scene = Image.open(images / "000002.png").convert("RGB")
    rotated = scene.crop((0, 0, 70, 96))  # 70 wide, 96 high; shown 96 wide, 70 high
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated.save(images / "my photo 1.JPG", exif=exif, quality=95)
    (images / "ünï").mkdir()
    Image.open(images / "000003.png").convert("L").save(images / "ünï" / "café #2.png")
    return images


def count(inputs: Path) -> int:
    return sum(1 for p in inputs.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def run(inputs: Path) -> Path:
    out = inputs.parent.parent / "out"
    result = invoke_cli(["segment", inputs, "-m", "demo", "--out", out, "--save", SAVE,
                         "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def coco_instances(run: Path) -> dict:
    return json.loads((run / "coco/annotations/instances_default.json").read_text())


def per_image_counts(data: dict) -> dict[str, int]:
    names = {im["id"]: Path(im["file_name"]).stem for im in data["images"]}
    counts = dict.fromkeys(names.values(), 0)
    for ann in data["annotations"]:
        counts[names[ann["image_id"]]] += 1
    return counts


# --- Datumaro ------------------------------------------------------------------------
def test_datumaro_imports_the_coco_dataset_with_every_mask_labelled(run, inputs):
    dm = pytest.importorskip("datumaro", reason="needs datumaro (pip install -e '.[interop]')")
    dataset = dm.Dataset.import_from(str(run / "coco"), "coco_instances")
    data = coco_instances(run)
    labels = dataset.categories()[dm.AnnotationType.label]
    assert [c.name for c in labels] == ["circle", "square", "triangle"]
    assert len(dataset) == len(data["images"]) == count(inputs)
    got = {}
    for item in dataset:
        masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        assert all(a.label is not None and 0 < a.attributes["score"] <= 1 for a in masks)
        assert Path(item.media.path).is_file()
        got[Path(item.id).name] = len(masks)
    assert got == per_image_counts(data)


def test_datumaro_imports_the_cvat_xml_with_every_polygon_labelled(run, inputs, tmp_path):
    dm = pytest.importorskip("datumaro", reason="needs datumaro (pip install -e '.[interop]')")
    # A CVAT export's layout (the XML beside images/): Datumaro's importer wants the images.
    (tmp_path / "annotations.xml").write_bytes((run / "cvat.xml").read_bytes())
    os.symlink(inputs, tmp_path / "images")
    dataset = dm.Dataset.import_from(str(tmp_path / "annotations.xml"), "cvat")
    polygons = [
        a for item in dataset for a in item.annotations if a.type == dm.AnnotationType.polygon
    ]
    xml_polygons = list(ET.parse(run / "cvat.xml").getroot().iter("polygon"))
    assert len(dataset) == count(inputs) and len(polygons) == len(xml_polygons) > 0
    assert all(a.label is not None for a in polygons)


# --- Ultralytics ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ultralytics_utils(tmp_path_factory):
    """`ultralytics.data.utils` with its settings in a temp folder (not ~/.config), and
    without `check_det_dataset`'s last step, a plotting-font download (no network in CI;
    it checks nothing about the dataset)."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("ultralytics")))
    utils = pytest.importorskip("ultralytics.data.utils", reason="needs ultralytics")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(utils, "check_font", lambda *args, **kwargs: None)
        yield utils


def test_ultralytics_accepts_the_yolo_data_yaml(run, ultralytics_utils):
    utils = ultralytics_utils
    data = utils.check_det_dataset(str(run / "yolo/data.yaml"))
    assert data["nc"] == 3 and data["names"] == {0: "circle", 1: "square", 2: "triangle"}
    assert Path(data["train"]) == run / "yolo/images" and Path(data["val"]).is_dir()


def test_ultralytics_verifies_every_image_and_label(run, inputs, ultralytics_utils):
    utils = ultralytics_utils
    images = sorted(str(p) for p in (run / "yolo/images").rglob("*") if p.is_file())
    assert len(images) == count(inputs)
    sizes = {im["file_name"]: (im["height"], im["width"])
             for im in json.loads((run / "images.json").read_text())}  # fmt: skip
    for image, label in zip(images, utils.img2label_paths(images)):
        result = utils.verify_image_label((image, label, "", False, 3, 0, 0, False))
        _, labels, shape, segments, _, missing, found, empty, corrupt, message = result
        assert (missing, corrupt, message) == (0, 0, ""), message
        rel = Path(image).relative_to(run / "yolo/images").as_posix()
        assert shape == sizes[rel]  # EXIF orientation applied alike
        lines = Path(label).read_text().splitlines()
        assert len(labels) == len(segments) == len(lines)
        assert found + empty == 1


# --- Label Studio --------------------------------------------------------------------
def test_label_studio_accepts_every_prediction(run, inputs):
    sdk = pytest.importorskip("label_studio_sdk.label_interface", reason="needs label-studio-sdk")
    interface = sdk.LabelInterface((run / "labelstudio/config.xml").read_text())
    tasks = json.loads((run / "labelstudio/tasks.json").read_text())
    predictions = [p for task in tasks for p in task["predictions"]]
    assert len(predictions) == count(inputs) and sum(len(p["result"]) for p in predictions) > 0
    assert all(interface.validate_prediction(p) for p in predictions)


def test_label_studio_refuses_a_prediction_that_does_not_match_the_config(run):
    sdk = pytest.importorskip("label_studio_sdk.label_interface", reason="needs label-studio-sdk")
    interface = sdk.LabelInterface((run / "labelstudio/config.xml").read_text())
    task = next(t for t in json.loads((run / "labelstudio/tasks.json").read_text())
                if t["predictions"][0]["result"])  # fmt: skip
    region = task["predictions"][0]["result"][0]
    bad = {**region, "value": {**region["value"], "polygonlabels": ["dog"]}}
    assert not interface.validate_prediction({"result": [bad]})


# --- pycocotools and LabelMe ---------------------------------------------------------
def test_pycocotools_indexes_the_coco_dataset(run, inputs):
    from pycocotools.coco import COCO

    coco = COCO(str(run / "coco/annotations/instances_default.json"))
    assert len(coco.getImgIds()) == count(inputs) and len(coco.getAnnIds()) == len(
        coco.dataset["annotations"]
    )
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.imgs[ann["image_id"]]
        assert coco.annToMask(ann).shape == (image["height"], image["width"])


def test_labelme_reads_every_json(run, inputs):
    labelme = pytest.importorskip("labelme", reason="needs labelme")
    files = sorted((run / "labelme").rglob("*.json"))
    assert len(files) == count(inputs)
    for path in files:
        loaded = labelme.LabelFile(str(path))  # reads the image through imagePath, too
        assert len(loaded.shapes) == len(json.loads(path.read_text())["shapes"])
        assert loaded.image_data  # the image bytes, found from the JSON's folder
