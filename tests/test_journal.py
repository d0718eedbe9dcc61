"""Resume journal: per-image records, settings changes, assembling the final files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.journal import Journal, settings_hash, write_failures

HASH = "settings-a"
RELS = ["a.jpg", "sub/b.jpg", "c.png"]


def results_for(seed: int, image_id: int) -> list[dict]:
    """Realistic COCO results (awkward floats, RLE) for a fake image."""
    rng = np.random.default_rng(seed)
    n = seed % 3 + 1
    masks = rng.random((n, 9, 11)) > 0.5
    boxes = np.sort(rng.random((n, 4)) * 10, axis=1)
    dets = Detections(boxes, rng.random(n), np.ones(n), masks, ("bg", "x"), (0, 1))
    return dets.to_coco(image_id)


def record(journal: Journal, index: int, settings: str = HASH) -> None:
    rel = RELS[index]
    journal.record(
        rel, source=f"/in/{rel}", image_id=index + 1, width=11, height=9,
        results=results_for(index, index + 1), settings_hash=settings,
    )  # fmt: skip


def test_settings_hash_ignores_key_order() -> None:
    assert settings_hash({"a": 1, "b": 0.5}) == settings_hash({"b": 0.5, "a": 1})


def test_settings_hash_changes_with_any_value() -> None:
    assert settings_hash({"score_thr": 0.5}) != settings_hash({"score_thr": 0.6})


def test_settings_hash_accepts_a_dataclass() -> None:
    @dataclass
    class Settings:
        model: str
        score_thr: float

    assert settings_hash(Settings("m", 0.5)) == settings_hash({"score_thr": 0.5, "model": "m"})


def test_a_recorded_image_is_done_under_the_same_settings(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 1)
    assert journal.is_done("sub/b.jpg", HASH)
    assert journal.load("sub/b.jpg").num_detections == len(results_for(1, 2))


def test_an_unrecorded_image_is_not_done(tmp_path: Path) -> None:
    assert not Journal(tmp_path).is_done("a.jpg", HASH)


def test_a_record_made_under_other_settings_is_not_done(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0, settings="settings-old")
    assert not journal.is_done("a.jpg", HASH)


def test_records_live_under_the_hidden_state_folder_mirroring_the_input_tree(
    tmp_path: Path,
) -> None:
    record(Journal(tmp_path), 1)
    path = tmp_path / ".mrcnn" / "records" / "sub" / "b.jpg.json"
    data = json.loads(path.read_text())
    assert data["rel"] == "sub/b.jpg" and data["source"] == "/in/sub/b.jpg"
    assert data["num_detections"] == len(data["results"])


def test_a_corrupt_record_counts_as_not_done(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    journal.record_path("a.jpg").write_text('{"rel": "a.jp')
    assert not journal.is_done("a.jpg", HASH)


def test_a_resumed_run_assembles_the_same_files_as_a_clean_run(tmp_path: Path) -> None:
    clean = Journal(tmp_path / "clean")
    for i in range(3):
        record(clean, i)
    interrupted = tmp_path / "resumed"
    record(Journal(interrupted), 2)  # first run stopped after the last image
    resumed = Journal(interrupted)  # second run: a fresh process
    for i in range(3):
        if not resumed.is_done(RELS[i], HASH):
            record(resumed, i)
    assert resumed.assemble(RELS, HASH) == clean.assemble(RELS, HASH)


def test_assembled_results_equal_the_writers_output_in_input_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in (2, 0, 1):
        record(journal, i)
    results, images = journal.assemble(RELS, HASH)
    assert results == results_for(0, 1) + results_for(1, 2) + results_for(2, 3)
    assert [image["file_name"] for image in images] == RELS


def test_images_without_a_record_are_left_out(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    results, images = journal.assemble(RELS, HASH)
    assert [image["file_name"] for image in images] == ["a.jpg"]
    assert {r["image_id"] for r in results} == {1}


def test_records_from_other_settings_are_left_out(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    record(journal, 1, settings="settings-old")
    _, images = journal.assemble(RELS, HASH)
    assert [image["file_name"] for image in images] == ["a.jpg"]


def test_assemble_takes_image_ids_from_the_given_mapping(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    results, images = journal.assemble(RELS[:1], HASH, image_ids={"a.jpg": 139})
    assert images[0]["id"] == 139 and {r["image_id"] for r in results} == {139}


def test_forget_makes_an_image_not_done(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    journal.forget("a.jpg")
    assert not journal.is_done("a.jpg", HASH)


def test_clear_drops_every_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        record(journal, i)
    journal.clear()
    assert journal.assemble(RELS) == ([], [])


def test_failures_are_written_one_json_object_per_line(tmp_path: Path) -> None:
    failures = [FailedItem(Path("/in/bad.jpg"), "cannot decode"), FailedItem("x.png", "empty")]
    path = write_failures(tmp_path, failures)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"path": "/in/bad.jpg", "reason": "cannot decode"},
        {"path": "x.png", "reason": "empty"},
    ]


def test_a_run_without_failures_removes_a_stale_failures_file(tmp_path: Path) -> None:
    write_failures(tmp_path, [FailedItem("x.png", "empty")])
    assert write_failures(tmp_path, []) is None
    assert not (tmp_path / "failures.jsonl").exists()
