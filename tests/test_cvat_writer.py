"""CVAT for images 1.1: per-image fragments assembled into one escaped, well-formed XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import dets_from_masks, rect_mask

from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.cvat import cvat_fragment, cvat_points, write_cvat_xml
from mrcnn_cli.writers.polygons import polygons_to_mask

CLASS_NAMES = ("__background__", "person", "car")
CATEGORY_IDS = (0, 1, 3)
H, W = 40, 60


def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    return rect_mask(H, W, y0, y1, x0, x1)


def dets_of(masks: list[np.ndarray], labels: list[int], scores: list[float] | None = None):
    return dets_from_masks(masks, labels, CLASS_NAMES, CATEGORY_IDS, scores, (H, W))


def parse_points(text: str) -> np.ndarray:
    return np.array([[float(v) for v in pair.split(",")] for pair in text.split(";")])


def write_and_parse(tmp_path: Path, labels: list[str], fragments: list[dict]) -> ET.Element:
    path = tmp_path / "cvat.xml"
    write_cvat_xml(path, labels, fragments)
    return ET.parse(path).getroot()


def test_the_xml_has_the_cvat_for_images_1_1_shape(tmp_path: Path) -> None:
    fragment = cvat_fragment(dets_of([rect(5, 20, 5, 30)], [1], [0.875]), "a/b.jpg", H, W)
    root = write_and_parse(tmp_path, ["person", "car"], [fragment])
    assert root.tag == "annotations"
    assert root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task is not None and task.findtext("mode") == "annotation"
    assert task.findtext("size") == "1"
    assert [e.findtext("name") for e in task.iterfind("labels/label")] == ["person", "car"]
    label = task.find("labels/label")
    assert label is not None and label.findtext("attributes/attribute/name") == "score"
    (image,) = root.findall("image")
    assert image.attrib == {"id": "0", "name": "a/b.jpg", "width": str(W), "height": str(H)}
    (polygon,) = image.findall("polygon")
    assert polygon.attrib["label"] == "person"
    assert polygon.attrib["occluded"] == "0" and polygon.attrib["source"] == "auto"
    assert polygon.attrib["z_order"] == "0"
    assert "group_id" not in polygon.attrib, "a one-part instance is not grouped"
    (attribute,) = polygon.findall("attribute")
    assert attribute.attrib == {"name": "score"} and attribute.text == "0.8750"


def test_polygon_points_re_rasterise_to_the_mask(tmp_path: Path) -> None:
    mask = rect(5, 35, 10, 50) & ~rect(5, 15, 10, 20)
    root = write_and_parse(
        tmp_path, ["person"], [cvat_fragment(dets_of([mask], [1]), "i.png", H, W)]
    )
    points = parse_points(root.find("image/polygon").attrib["points"])  # type: ignore[union-attr]
    np.testing.assert_array_equal(polygons_to_mask([points], H, W), mask)


def test_points_are_x_comma_y_pairs_separated_by_semicolons() -> None:
    assert cvat_points([[1, 2], [3.5, 4]]) == "1.00,2.00;3.50,4.00"


def test_the_parts_of_one_instance_share_a_group_id(tmp_path: Path) -> None:
    two_parts = rect(2, 10, 2, 10) | rect(25, 38, 30, 58)
    fragment = cvat_fragment(dets_of([rect(12, 20, 40, 50), two_parts], [2, 1]), "i.png", H, W)
    root = write_and_parse(tmp_path, ["person", "car"], [fragment])
    shapes = [(p.attrib["label"], p.attrib.get("group_id")) for p in root.iterfind("image/polygon")]
    assert shapes == [("car", None), ("person", "2"), ("person", "2")]


def test_images_keep_fragment_order_and_get_ids_by_position(tmp_path: Path) -> None:
    names = ["z.jpg", "a/b.jpg", "m.jpg"]
    fragments = [cvat_fragment(dets_of([], []), name, H, W) for name in names]
    root = write_and_parse(tmp_path, ["person"], fragments)
    assert [(i.attrib["id"], i.attrib["name"]) for i in root.iterfind("image")] == [
        ("0", "z.jpg"),
        ("1", "a/b.jpg"),
        ("2", "m.jpg"),
    ]


def test_an_image_without_detections_is_listed_without_shapes(tmp_path: Path) -> None:
    root = write_and_parse(tmp_path, ["person"], [cvat_fragment(dets_of([], []), "e.jpg", H, W)])
    (image,) = root.findall("image")
    assert list(image) == []


def test_names_with_xml_special_characters_are_escaped(tmp_path: Path) -> None:
    names = ("__background__", 'a<b & "c"', "d'e>")
    dets = Detections([[0, 0, 1, 1]], [0.5], [1], rect(5, 20, 5, 30)[None], names, (0, 1, 2))
    fragment = cvat_fragment(dets, "dir & co/<img>.jpg", H, W)
    root = write_and_parse(tmp_path, list(names[1:]), [fragment])
    assert [e.findtext("name") for e in root.iterfind("meta/task/labels/label")] == list(names[1:])
    assert root.find("image").attrib["name"] == "dir & co/<img>.jpg"  # type: ignore[union-attr]
    assert root.find("image/polygon").attrib["label"] == 'a<b & "c"'  # type: ignore[union-attr]


def test_a_fragment_is_plain_json(tmp_path: Path) -> None:
    fragment = cvat_fragment(dets_of([rect(5, 20, 5, 30)], [1]), "i.jpg", H, W)
    assert json.loads(json.dumps(fragment)) == fragment


def test_fragments_read_back_from_json_write_the_same_xml(tmp_path: Path) -> None:
    fragments = [
        cvat_fragment(dets_of([rect(5, 20, 5, 30)], [2]), f"{i}.jpg", H, W) for i in range(3)
    ]
    write_cvat_xml(tmp_path / "a.xml", ["person", "car"], fragments)
    again = [json.loads(json.dumps(f)) for f in fragments]
    write_cvat_xml(tmp_path / "b.xml", ["person", "car"], again)
    assert (tmp_path / "a.xml").read_bytes() == (tmp_path / "b.xml").read_bytes()


def test_the_file_is_replaced_whole_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "cvat.xml"
    path.write_text("old")
    write_cvat_xml(path, ["person"], [])
    assert ET.parse(path).getroot().findtext("meta/task/size") == "0"
    assert [p.name for p in tmp_path.iterdir()] == ["cvat.xml"]


def test_detections_without_masks_are_refused() -> None:
    dets = Detections([[0, 0, 5, 5]], [0.9], [1], None, CLASS_NAMES, CATEGORY_IDS)
    with pytest.raises(ValueError, match="mask"):
        cvat_fragment(dets, "i.jpg", H, W)
