"""objects.csv: one row per detection, equal to the detections, in input order."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mrcnn_cli.detections import Detections
from mrcnn_cli.writers.csv_table import CSV_COLUMNS, object_rows, write_objects_csv

CLASS_NAMES = ("__background__", "person", "traffic light, red")
CATEGORY_IDS = (0, 1, 10)
H, W = 30, 40


def sample_dets() -> Detections:
    masks = np.zeros((2, H, W), bool)
    masks[0, 2:12, 3:13] = True  # 100 px
    masks[1, 20:25, 30:38] = True  # 40 px
    boxes = [[3.0, 2.0, 13.0, 12.0], [29.504, 19.996, 38.25, 25.5]]
    return Detections(boxes, [0.987654, 0.5], [1, 2], masks, CLASS_NAMES, CATEGORY_IDS)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_rows_equal_the_detections(tmp_path: Path) -> None:
    dets = sample_dets()
    write_objects_csv(tmp_path / "objects.csv", object_rows(dets, "sub/img.jpg", 7))
    rows = read_csv(tmp_path / "objects.csv")
    assert len(rows) == len(dets)
    for i, row in enumerate(rows):
        x1, y1, x2, y2 = dets.boxes[i]
        assert row["image"] == "sub/img.jpg" and int(row["image_id"]) == 7
        assert row["class"] == dets.names[i]
        assert int(row["category_id"]) == dets.coco_category_ids[i]
        assert abs(float(row["score"]) - dets.scores[i]) < 1e-5
        got = [float(row[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
        np.testing.assert_allclose(got, [x1, y1, x2 - x1, y2 - y1], atol=0.006)
        assert int(row["mask_area"]) == int(dets.masks[i].sum())  # type: ignore[index]


def test_the_header_is_the_documented_column_list(tmp_path: Path) -> None:
    write_objects_csv(tmp_path / "objects.csv", [])
    text = (tmp_path / "objects.csv").read_text()
    assert text.splitlines() == [",".join(CSV_COLUMNS)]
    assert CSV_COLUMNS == (
        "image", "image_id", "class", "category_id", "score",
        "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mask_area",
    )  # fmt: skip


def test_rows_keep_the_order_they_are_given_in(tmp_path: Path) -> None:
    dets = sample_dets()
    rows = object_rows(dets, "b.jpg", 2) + object_rows(dets[np.array([1])], "a.jpg", 1)
    write_objects_csv(tmp_path / "objects.csv", iter(rows))
    back = read_csv(tmp_path / "objects.csv")
    assert [(r["image"], r["class"]) for r in back] == [
        ("b.jpg", "person"),
        ("b.jpg", "traffic light, red"),
        ("a.jpg", "traffic light, red"),
    ]


def test_an_image_without_detections_has_no_rows() -> None:
    assert object_rows(Detections.empty(H, W, CLASS_NAMES, CATEGORY_IDS), "e.jpg", 1) == []


def test_mask_area_is_empty_for_a_model_without_masks(tmp_path: Path) -> None:
    dets = Detections([[0, 0, 4, 4]], [0.9], [1], None, CLASS_NAMES, CATEGORY_IDS)
    write_objects_csv(tmp_path / "objects.csv", object_rows(dets, "i.jpg", 1))
    assert read_csv(tmp_path / "objects.csv")[0]["mask_area"] == ""


def test_rows_are_rounded_like_coco_results() -> None:
    row = object_rows(sample_dets(), "i.jpg", 1)[1]
    assert row["score"] == 0.5 and row["bbox_x"] == 29.5 and row["bbox_w"] == 8.75
    assert object_rows(sample_dets(), "i.jpg", 1)[0]["score"] == 0.98765


def test_the_file_is_replaced_whole_and_no_temp_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "objects.csv"
    path.write_text("stale")
    write_objects_csv(path, object_rows(sample_dets(), "i.jpg", 1))
    assert len(read_csv(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["objects.csv"]
