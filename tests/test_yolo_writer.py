"""YOLO-seg labels: one normalised polygon line per instance, dense class indices."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from helpers import dets_from_masks, rect_mask

from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.polygons import polygons_to_mask
from mrcnn_cli.writers.yolo import (
    data_yaml_text,
    write_yolo_data_yaml,
    write_yolo_labels,
    yolo_label_lines,
    yolo_label_path,
)

# COCO-style slots: background at 0 and an unused "N/A" id between real classes.
CLASS_NAMES = ("__background__", "person", "N/A", "car")
CATEGORY_IDS = (0, 1, 2, 3)
H, W = 50, 80


def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    return rect_mask(H, W, y0, y1, x0, x1)


def dets_of(masks: list[np.ndarray], labels: list[int], scores: list[float] | None = None):
    return dets_from_masks(masks, labels, CLASS_NAMES, CATEGORY_IDS, scores, (H, W))


def parse_line(line: str) -> tuple[int, np.ndarray]:
    """The format rule: `class x y x y ...`, normalised -> pixel (x, y) vertices."""
    fields = line.split()
    points = np.array([float(v) for v in fields[1:]]).reshape(-1, 2) * [W, H]
    return int(fields[0]), points


def test_the_class_is_the_position_among_real_classes() -> None:
    lines = yolo_label_lines(dets_of([rect(5, 20, 5, 30), rect(25, 45, 40, 70)], [1, 3]), H, W)
    assert [parse_line(line)[0] for line in lines] == [0, 1], "person -> 0, car (after N/A) -> 1"


def test_one_line_per_instance_in_detection_order() -> None:
    masks = [rect(25, 45, 40, 70), rect(5, 20, 5, 30), rect(2, 10, 60, 75)]
    lines = yolo_label_lines(dets_of(masks, [3, 1, 3]), H, W)
    assert len(lines) == 3
    assert [parse_line(line)[0] for line in lines] == [1, 0, 1]


def test_coordinates_are_normalised_to_the_unit_square_with_six_decimals() -> None:
    (line,) = yolo_label_lines(dets_of([rect(0, H, 0, W)], [1]), H, W)
    values = line.split()[1:]
    assert all(len(v.split(".")[1]) == 6 for v in values)
    numbers = np.array([float(v) for v in values])
    assert numbers.min() == 0.0 and numbers.max() <= 1.0
    assert f"{(W - 1) / W:.6f}" in values and f"{(H - 1) / H:.6f}" in values


def test_a_label_line_re_rasterises_to_the_mask() -> None:
    mask = np.zeros((H, W), bool)
    mask[10:40, 20:60] = True
    mask[10:20, 20:30] = False  # a notch: concave outline
    (line,) = yolo_label_lines(dets_of([mask], [1]), H, W)
    _, points = parse_line(line)
    np.testing.assert_array_equal(polygons_to_mask([points], H, W), mask)


def test_a_multi_part_instance_is_one_line_covering_every_part() -> None:
    mask = rect(2, 12, 2, 15) | rect(30, 48, 50, 78)
    lines = yolo_label_lines(dets_of([mask], [3]), H, W)
    assert len(lines) == 1
    back = polygons_to_mask([parse_line(lines[0])[1]], H, W)
    assert (back & mask).sum() == mask.sum()
    assert (back & ~mask).sum() < 60, "only a one-pixel bridge between the parts is added"


def test_holes_are_filled() -> None:
    ring = rect(5, 45, 5, 45) & ~rect(15, 35, 15, 35)
    (line,) = yolo_label_lines(dets_of([ring], [1]), H, W)
    np.testing.assert_array_equal(polygons_to_mask([parse_line(line)[1]], H, W), rect(5, 45, 5, 45))


def test_an_instance_without_a_polygon_gets_no_line() -> None:
    dot = np.zeros((H, W), bool)
    dot[3, 3] = True
    lines = yolo_label_lines(dets_of([dot, rect(5, 20, 5, 30)], [1, 3]), H, W)
    assert [parse_line(line)[0] for line in lines] == [1]


def test_an_image_without_detections_gets_an_empty_file(tmp_path: Path) -> None:
    path = write_yolo_labels(tmp_path, "a/b.jpg", dets_of([], []), H, W)
    assert path == tmp_path / "yolo" / "labels" / "a" / "b.txt"
    assert path.read_text() == ""


def test_a_written_file_has_one_newline_terminated_line_per_instance(tmp_path: Path) -> None:
    dets = dets_of([rect(5, 20, 5, 30), rect(25, 45, 40, 70)], [1, 3])
    text = write_yolo_labels(tmp_path, "x.png", dets, H, W).read_text()
    assert text.endswith("\n") and text.count("\n") == 2
    assert text.splitlines() == yolo_label_lines(dets, H, W)


def test_label_path_mirrors_the_input_tree() -> None:
    path = yolo_label_path(Path("/out"), PurePosixPath("day1/cam2/img.0001.jpg"))
    assert path == Path("/out/yolo/labels/day1/cam2/img.0001.txt")


def test_data_yaml_lists_root_splits_and_real_classes_by_index() -> None:
    text = data_yaml_text(CLASS_NAMES, "/data/run/yolo")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ['path: "/data/run/yolo"', 'train: "images"', 'val: "images"', "nc: 2",
                     "names:", '  0: "person"', '  1: "car"']  # fmt: skip


def test_data_yaml_quotes_names_that_yaml_would_misread() -> None:
    names = ("__background__", "a: b", 'say "hi"', "café", "yes")
    text = data_yaml_text(names)
    values = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("  ")]
    assert [json.loads(v) for v in values] == list(names[1:])


def test_data_yaml_is_written_beside_the_labels_folder(tmp_path: Path) -> None:
    path = write_yolo_data_yaml(tmp_path, CLASS_NAMES)
    assert path == tmp_path / "yolo" / "data.yaml"
    assert path.read_text() == data_yaml_text(CLASS_NAMES, (tmp_path / "yolo").absolute())


def test_a_val_split_lists_each_image_once_by_a_hash_of_its_path(tmp_path: Path) -> None:
    rels = [f"d/{i:03d}.jpg" for i in range(200)]
    write_yolo_data_yaml(tmp_path, CLASS_NAMES, rels, val_split=0.25)
    root = tmp_path / "yolo"
    train = (root / "train.txt").read_text().splitlines()
    val = (root / "val.txt").read_text().splitlines()
    assert sorted(train + val) == sorted(f"./images/{r}" for r in rels)
    assert 25 <= len(val) <= 75  # about a quarter
    assert 'train: "train.txt"' in (root / "data.yaml").read_text()
    write_yolo_data_yaml(tmp_path, CLASS_NAMES, reversed(rels), val_split=0.25)
    assert sorted((root / "val.txt").read_text().splitlines()) == sorted(val)


def test_detections_without_masks_are_refused() -> None:
    dets = Detections([[0, 0, 5, 5]], [0.9], [1], None, CLASS_NAMES, CATEGORY_IDS)
    with pytest.raises(ValueError, match="mask"):
        yolo_label_lines(dets, H, W)


def test_a_background_or_na_label_is_refused() -> None:
    with pytest.raises(ValueError, match="not a real class"):
        yolo_label_lines(dets_of([rect(5, 20, 5, 30)], [2]), H, W)
