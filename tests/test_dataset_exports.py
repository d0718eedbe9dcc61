"""Dataset exports: `--save coco-dataset,yolo,labelstudio` (what the labelling tools import)
and `mrcnn train --data` (what they export), round trip included.

One module-scoped run of the bundled demo model over tiny generated images feeds every
test; tests/test_interop_readers.py reads the same kind of run with the tools' own readers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from helpers import invoke_cli, json_summary, tiny_scene_tree
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mrcnn_cli.config import LABELSTUDIO_PREFIX
from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.train.dataset import CocoInstanceDataset
from mrcnn_cli.train.readers import detect_format, read_labels
from mrcnn_cli.writers.polygons import mask_to_polygons, polygons_to_mask

SAVE = "coco,coco-dataset,yolo,labelme,cvat,labelstudio"


def segment(inputs: Path, out: Path, *extra: str) -> dict:
    result = invoke_cli(["segment", inputs, "-m", "demo", "--out", out, "--save", SAVE,
                         "--json", "--quiet", *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json_summary(result)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return tiny_scene_tree(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def run(inputs: Path) -> Path:
    out = inputs.parent.parent / "out"
    summary = segment(inputs, out)
    assert summary["detections"] > 0
    return out


def instances(run: Path) -> dict:
    return json.loads((run / "coco/annotations/instances_default.json").read_text())


def prediction_masks(run: Path) -> dict[str, list[np.ndarray]]:
    """file_name -> the run's masks as predictions.json has them, in order."""
    images = {im["id"]: im["file_name"] for im in json.loads((run / "images.json").read_text())}
    out: dict[str, list[np.ndarray]] = {name: [] for name in images.values()}
    for entry in json.loads((run / "predictions.json").read_text()):
        out[images[entry["image_id"]]].append(mask_utils.decode(entry["segmentation"]) > 0)
    return out


# --- coco-dataset -------------------------------------------------------------------
def test_coco_dataset_has_every_section_tools_require(run):
    data = instances(run)
    assert {"info", "licenses", "images", "categories", "annotations"} <= set(data)
    assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle"]
    assert data["info"]["images_root"] == "../images/default"


def test_coco_dataset_ids_are_unique_and_refer_to_listed_entries(run):
    data = instances(run)
    ann_ids = [a["id"] for a in data["annotations"]]
    image_ids = [im["id"] for im in data["images"]]
    assert len(set(ann_ids)) == len(ann_ids) > 0 and len(set(image_ids)) == len(image_ids) == 5
    cats = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        assert ann["image_id"] in image_ids and ann["category_id"] in cats
        assert ann["iscrowd"] == 0 and 0 < ann["score"] <= 1


def test_coco_dataset_rle_size_is_the_image_height_and_width(run):
    data = instances(run)
    size = {im["id"]: [im["height"], im["width"]] for im in data["images"]}
    assert sorted(map(tuple, size.values())) == [(72, 96)] + [(96, 96)] * 4
    for ann in data["annotations"]:
        assert ann["segmentation"]["size"] == size[ann["image_id"]]


def test_coco_dataset_area_and_bbox_are_those_of_the_mask(run):
    coco = COCO(str(run / "coco/annotations/instances_default.json"))
    for ann in coco.dataset["annotations"]:
        mask = coco.annToMask(ann).astype(bool)
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_coco_dataset_file_names_are_the_linked_inputs(run, inputs):
    root = run / "coco/images/default"
    for image in instances(run)["images"]:
        path = root / image["file_name"]
        assert path.is_symlink() and path.resolve() == (inputs / image["file_name"]).resolve()
        assert cv2.imread(str(path)).shape[:2] == (image["height"], image["width"])


def test_coco_dataset_holds_every_detection_with_a_mask(run):
    masks = prediction_masks(run)
    assert len(instances(run)["annotations"]) == sum(len(m) for m in masks.values())


def test_coco_dataset_polygons_and_copies_on_request(inputs, tmp_path):
    segment(inputs, tmp_path, "--polygons", "--copy-images")
    data = instances(tmp_path)
    assert data["annotations"]
    for ann in data["annotations"]:
        assert isinstance(ann["segmentation"], list)
        assert all(len(part) >= 6 and len(part) % 2 == 0 for part in ann["segmentation"])
    for image in data["images"]:
        path = tmp_path / "coco/images/default" / image["file_name"]
        assert path.is_file() and not path.is_symlink()
        assert path.read_bytes() == (inputs / image["file_name"]).read_bytes()


def test_coco_polygons_fill_back_to_the_masks_with_pycocotools(inputs, tmp_path):
    segment(inputs, tmp_path, "--save", "coco,coco-dataset", "--polygons")
    coco = COCO(str(tmp_path / "coco/annotations/instances_default.json"))
    masks = [m for ms in prediction_masks(tmp_path).values() for m in ms]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(masks)  # images and detections in the same order
    for ann, mask in zip(anns, masks):
        filled = polygons_to_mask(mask_to_polygons(mask), *mask.shape)
        assert (coco.annToMask(ann).astype(bool) == filled).all()


def test_copy_images_is_part_of_the_resume_settings(inputs, tmp_path):
    segment(inputs, tmp_path, "--save", "coco-dataset")
    again = segment(inputs, tmp_path, "--save", "coco-dataset", "--copy-images")
    assert again["processed"] == 5 and again["skipped"] == 0


def test_merged_shards_give_the_unsharded_coco_dataset(run, inputs, tmp_path):
    for k in range(2):
        segment(inputs, tmp_path / f"s{k}", "--shard", f"{k}/2")
    result = invoke_cli(["merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m",
                         "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    merged = instances(tmp_path / "m")
    assert merged == instances(run)
    ids = [a["id"] for a in merged["annotations"]]
    assert len(ids) == len(set(ids))
    for name in ("labelstudio/tasks.json", "yolo/data.yaml"):
        whole = (run / name).read_text().replace(str(run), "OUT")
        assert (tmp_path / "m" / name).read_text().replace(str(tmp_path / "m"), "OUT") == whole
    link = tmp_path / "m/yolo/images/sub/wide.png"
    assert link.is_symlink() and link.resolve() == (inputs / "sub/wide.png").resolve()


# --- yolo ---------------------------------------------------------------------------
def test_yolo_data_yaml_names_the_dataset_root_splits_and_classes(run):
    data = yaml.safe_load((run / "yolo/data.yaml").read_text())
    assert data["path"] == os.path.abspath(run / "yolo")
    assert data["train"] == data["val"] == "images"
    assert data["names"] == {0: "circle", 1: "square", 2: "triangle"}


def test_every_yolo_label_file_has_its_image_beside_it(run):
    labels = sorted((run / "yolo/labels").rglob("*.txt"))
    assert len(labels) == 5
    for label in labels:
        rel = label.relative_to(run / "yolo/labels").with_suffix(".png")
        assert (run / "yolo/images" / rel).is_file()


def test_a_yolo_val_split_writes_image_lists(inputs, tmp_path):
    segment(inputs, tmp_path, "--save", "yolo", "--val-split", "0.5")
    data = yaml.safe_load((tmp_path / "yolo/data.yaml").read_text())
    assert (data["train"], data["val"]) == ("train.txt", "val.txt")
    listed = [
        line
        for name in ("train.txt", "val.txt")
        for line in (tmp_path / "yolo" / name).read_text().splitlines()
    ]
    assert sorted(listed) == sorted(
        f"./images/{p.relative_to(inputs)}" for p in inputs.rglob("*.png")
    )


# --- labelstudio --------------------------------------------------------------------
def test_labelstudio_tasks_point_at_the_images_through_the_prefix(run, inputs):
    tasks = json.loads((run / "labelstudio/tasks.json").read_text())
    names = sorted(t["data"]["image"].removeprefix(LABELSTUDIO_PREFIX) for t in tasks)
    assert names == sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*.png"))


def test_labelstudio_polygons_are_percent_of_the_original_size(run, inputs):
    tasks = json.loads((run / "labelstudio/tasks.json").read_text())
    masks = prediction_masks(run)
    for task in tasks:
        prediction = task["predictions"][0]
        assert prediction["model_version"].startswith("demo")
        name = task["meta"]["file_name"]
        for region in prediction["result"]:
            w, h = region["original_width"], region["original_height"]
            assert (h, w) == masks[name][0].shape
            points = np.array(region["value"]["points"])
            assert points.min() >= 0 and points[:, 0].max() <= 100 and points[:, 1].max() <= 100
        # back in pixels, the regions of instance k cover its mask's filled outline
        for k, mask in enumerate(masks[name], 1):
            parts = [np.array(r["value"]["points"]) * [w / 100, h / 100]
                     for r in prediction["result"] if r["meta"]["instance"] == k]  # fmt: skip
            expected = polygons_to_mask(mask_to_polygons(mask), h, w)
            assert (polygons_to_mask(parts, h, w) == expected).all()


def test_labelstudio_config_declares_every_class(run):
    config = (run / "labelstudio/config.xml").read_text()
    assert '<PolygonLabels name="label" toName="image"' in config
    for name in ("circle", "square", "triangle"):
        assert f'<Label value="{name}"' in config


def test_image_urls_are_percent_encoded_for_web_prefixes_only():
    from mrcnn_cli.writers.labelstudio import image_url

    assert (
        image_url("/data/local-files/?d=", "a b/c#1.jpg") == "/data/local-files/?d=a%20b/c%231.jpg"
    )
    assert image_url("https://h/x/", "é.jpg") == "https://h/x/%C3%A9.jpg"
    assert image_url("s3://bucket/", "a b.jpg") == "s3://bucket/a b.jpg"


def test_the_image_prefix_is_configurable(inputs, tmp_path):
    segment(inputs, tmp_path, "--save", "labelstudio", "--image-prefix", "s3://bucket/shots/")
    tasks = json.loads((tmp_path / "labelstudio/tasks.json").read_text())
    assert all(t["data"]["image"].startswith("s3://bucket/shots/") for t in tasks)


# --- train --data: the way back -----------------------------------------------------
EXPORTS = {
    "coco": ("coco/annotations/instances_default.json", None),
    "yolo": ("yolo/data.yaml", None),
    "labelme": ("labelme", None),
    "cvat": ("cvat.xml", "inputs"),
}


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_each_export_reads_back_as_the_masks_it_was_made_from(run, inputs, fmt):
    path, images = EXPORTS[fmt]
    labels = read_labels(run / path, images=inputs if images else None)
    assert labels.format == fmt
    dataset = CocoInstanceDataset.from_labels(labels)
    assert dataset.class_names == ("__background__", "circle", "square", "triangle")
    masks = prediction_masks(run)
    assert len(dataset) == len(masks)
    for index in range(len(dataset)):
        rel = dataset.images[index]["file_name"]
        key = next(k for k in masks if rel.endswith(k))
        _, target = dataset.load(index)
        got = target["masks"].numpy().astype(bool)
        expected = masks[key] if fmt == "coco" else [
            polygons_to_mask(mask_to_polygons(m), *m.shape) for m in masks[key]
        ]  # fmt: skip
        expected = [m for m in expected if m.any()]
        assert len(got) == len(expected), rel
        for a, b in zip(got, expected):
            assert (a == b).all(), rel


@pytest.mark.parametrize(
    "path,fmt",
    [("coco", "coco"), ("yolo", "yolo"), ("labelme", "labelme"), ("cvat.xml", "cvat"),
     ("yolo/data.yaml", "yolo"), ("coco/annotations/instances_default.json", "coco")],
)  # fmt: skip
def test_the_format_is_detected_from_the_path(run, path, fmt):
    assert detect_format(run / path) == fmt


def test_a_path_that_is_no_training_data_is_one_clear_error(tmp_path):
    (tmp_path / "labels.csv").write_text("a,b\n")
    with pytest.raises(MrcnnError, match="labels.csv: not a training data format"):
        read_labels(tmp_path / "labels.csv")
    with pytest.raises(MrcnnError, match="training data not found"):
        read_labels(tmp_path / "missing.json")


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_training_runs_on_each_export(run, inputs, fmt, tmp_path):
    from mrcnn_cli.train.loop import TrainConfig, train

    path, images = EXPORTS[fmt]
    cfg = TrainConfig(data=run / path, images=inputs if images else None, out=tmp_path,
                      steps=2, batch_size=1, warmup_steps=0, threads=1, lr=0.001,
                      log_every=1)  # fmt: skip
    state = train(cfg)
    assert state.step == 2 and (tmp_path / "final.pt").is_file()
    losses = [r["loss"] for r in state.history if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_train_data_on_the_command_line(run, tmp_path):
    result = invoke_cli(["train", "--data", run / "labelme", "--steps", "1", "--batch-size",
                         "1", "--warmup", "0", "-o", tmp_path, "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "final.pt").is_file()


# --- train --data: refusals -----------------------------------------------------------
@pytest.mark.parametrize(
    "args,message",
    [
        ([], "give the training data: --data PATH, or --images DIR with --ann FILE"),
        (["--data", "x.json", "--ann", "y.json"], "give the training data"),
        (["--ann", "y.json"], "--ann needs --images DIR"),
        (["--images", ".", "--ann", "y.json", "--classes", "a"], "--classes goes with --data"),
    ],
)
def test_train_says_in_one_line_what_data_it_needs(args, message, tmp_path):
    result = invoke_cli(["train", "-o", tmp_path, "--quiet", *args])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def labelme_doc(image: str, shapes: list[dict]) -> dict:
    return {"version": "5.5.0", "shapes": shapes, "imagePath": image, "imageData": None,
            "imageHeight": 96, "imageWidth": 96, "flags": {}}  # fmt: skip


def shape(label: str, points: list) -> dict:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon"}


@pytest.fixture
def labelme_folder(inputs, tmp_path) -> Path:
    image = os.path.relpath(inputs / "000000.png", tmp_path)
    doc = labelme_doc(image, [shape("circle", [[10, 10], [30, 10], [20, 30]])])
    (tmp_path / "a.json").write_text(json.dumps(doc))
    return tmp_path


def test_a_label_missing_from_the_class_list_is_one_clear_error(labelme_folder, tmp_path):
    with pytest.raises(
        MrcnnError, match=r"a.json: label 'circle' is not in the class list \(dog, cat\)"
    ):
        read_labels(labelme_folder, classes=["dog", "cat"])
    out = tmp_path / "run"
    result = invoke_cli(["train", "--data", labelme_folder, "--classes", "dog,cat", "-o", out,
                         "--steps", "1", "--quiet"])  # fmt: skip
    assert result.exit_code == 2
    assert "label 'circle' is not in the class list" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_labelme_polygon_with_two_points_is_one_clear_error(labelme_folder, inputs):
    image = os.path.relpath(inputs / "000000.png", labelme_folder)
    doc = labelme_doc(image, [shape("circle", [[10, 10], [30, 10]])])
    (labelme_folder / "a.json").write_text(json.dumps(doc))
    with pytest.raises(MrcnnError, match=r"a.json: shape #1 \('circle'\) is a polygon with 2 "):
        read_labels(labelme_folder)


def test_a_yolo_class_index_outside_the_names_is_one_clear_error(run, tmp_path):
    label = tmp_path / "labels/000000.txt"
    label.parent.mkdir()
    label.write_text("7 0.1 0.1 0.2 0.1 0.2 0.2\n")
    (tmp_path / "images").mkdir()
    os.symlink(run / "yolo/images/000000.png", tmp_path / "images/000000.png")
    (tmp_path / "data.yaml").write_text("train: images\nval: images\nnames: [circle, square]\n")
    with pytest.raises(MrcnnError, match=r"000000.txt:1: class 7 is not in the class list"):
        read_labels(tmp_path / "data.yaml")
    label.write_text("0 0.1 0.1\n")  # (two points would be read as a box, as Ultralytics does)
    with pytest.raises(MrcnnError, match=r"000000.txt:1: .* polygon with 1 point"):
        read_labels(tmp_path / "data.yaml")


def test_a_cvat_label_not_declared_or_a_short_polygon_is_one_clear_error(run, inputs, tmp_path):
    xml = (run / "cvat.xml").read_text()
    bad_label = tmp_path / "label.xml"
    bad_label.write_text(xml.replace('label="circle"', 'label="dog"', 1))
    with pytest.raises(MrcnnError, match=r"label 'dog' is not in the class list"):
        read_labels(bad_label, images=inputs)
    start = xml.index('points="', xml.index("<polygon")) + len('points="')
    end = xml.index('"', start)
    short = xml[:start] + "1.00,1.00;5.00,5.00" + xml[end:]
    bad_points = tmp_path / "short.xml"
    bad_points.write_text(short)
    with pytest.raises(MrcnnError, match=r"is a polygon with 2 point"):
        read_labels(bad_points, images=inputs)


# --- holes and several parts, decided per format ------------------------------------
def ring_and_dot_record():
    """One instance: a 20x20 square with a 6x6 hole, plus a separate 4x4 dot."""
    from helpers import TINY_CATEGORY_IDS, TINY_CLASSES, dets_from_masks

    from mrcnn_cli.journal import ImageRecord

    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:30] = True
    mask[17:23, 17:23] = False  # the hole
    mask[40:44, 50:54] = True  # the second part
    dets = dets_from_masks([mask], [2], TINY_CLASSES, TINY_CATEGORY_IDS, [0.8], (48, 64))
    record = ImageRecord("a/b.png", "/in/a/b.png", 7, 64, 48, dets.to_coco(7), "h")
    return record, mask


def test_coco_dataset_rle_keeps_holes_and_parts_in_one_annotation():
    from mrcnn_cli.writers.coco_dataset import image_annotations

    record, mask = ring_and_dot_record()
    [ann] = image_annotations(record, 7, first_id=5)
    assert ann["id"] == 5 and ann["area"] == mask.sum()
    rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
    assert (mask_utils.decode(rle).astype(bool) == mask).all()


def test_coco_dataset_polygons_are_one_per_part_with_holes_filled():
    from mrcnn_cli.writers.coco_dataset import image_annotations

    record, mask = ring_and_dot_record()
    [ann] = image_annotations(record, 7, first_id=1, polygons=True)
    assert len(ann["segmentation"]) == 2
    filled = mask_utils.decode(
        mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 48, 64))
    )
    expected = mask.copy()
    expected[17:23, 17:23] = True
    assert (filled.astype(bool) == expected).all()


def test_labelstudio_gives_each_part_a_region_of_the_same_instance():
    from mrcnn_cli.writers.labelstudio import task_for

    record, mask = ring_and_dot_record()
    task = task_for(record, 7, {2: "square"}, "/data/local-files/?d=", "m")
    regions = task["predictions"][0]["result"]
    assert len(regions) == 2 and len({r["id"] for r in regions}) == 2
    assert {r["meta"]["instance"] for r in regions} == {1}
    assert all(r["value"]["polygonlabels"] == ["square"] and r["score"] == 0.8 for r in regions)
    parts = [np.array(r["value"]["points"]) * [64 / 100, 48 / 100] for r in regions]
    expected = mask.copy()
    expected[17:23, 17:23] = True  # holes filled, as in every polygon format
    assert (polygons_to_mask(parts, 48, 64) == expected).all()
    assert task["data"]["image"] == "/data/local-files/?d=a/b.png"
