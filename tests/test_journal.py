"""Resume journal: per-image records, settings changes, assembling the final files."""

from __future__ import annotations

import json
import multiprocessing
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.journal import FAILURES_FILE, Journal, settings_hash, write_failures
from mrcnn_cli.writers.coco import write_images_file, write_predictions

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


def stamped(journal: Journal, stamp: str | None) -> None:
    journal.record("a.jpg", source="/in/a.jpg", image_id=1, width=11, height=9,
                   results=[], settings_hash=HASH, stamp=stamp)  # fmt: skip


def test_a_record_of_another_source_file_is_not_done(tmp_path: Path) -> None:
    stamped(Journal(tmp_path), "1000:1700000000000000000")
    journal = Journal(tmp_path)  # read back from disk, as a rerun does
    assert journal.is_done("a.jpg", HASH, "1000:1700000000000000000")
    assert not journal.is_done("a.jpg", HASH, "1000:1700000000000000001")
    assert not journal.is_done("a.jpg", HASH, "1001:1700000000000000000")


def test_the_stamp_is_checked_in_the_same_process_too(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.is_done("x.jpg", HASH)  # the index is loaded before the record is made
    stamped(journal, "5:6")
    assert journal.is_done("a.jpg", HASH, "5:6") and not journal.is_done("a.jpg", HASH, "5:7")


def test_a_record_without_a_stamp_matches_any_source(tmp_path: Path) -> None:
    stamped(Journal(tmp_path), None)  # written before stamps existed
    assert Journal(tmp_path).is_done("a.jpg", HASH, "5:6")


def test_records_are_appended_to_one_segment_file_per_process(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        record(journal, i)
    segments = list((tmp_path / ".mrcnn" / "journal").iterdir())
    assert len(segments) == 1 and segments[0].suffix == ".jsonl"
    lines = segments[0].read_bytes().splitlines()
    header = json.loads(lines[1].split(b"\t", 1)[0])
    assert header["rel"] == "sub/b.jpg" and header["source"] == "/in/sub/b.jpg"
    assert header["num_detections"] == len(results_for(1, 2))


def segment_of(journal: Journal) -> Path:
    (segment,) = journal.journal_dir.iterdir()
    return segment


def test_a_corrupt_record_counts_as_not_done(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    record(journal, 1)
    journal.close()
    segment = segment_of(journal)
    data = segment.read_bytes()
    segment.write_bytes(data.replace(b'"counts": "', b'"counts": "X', 1))  # CRC mismatch
    fresh = Journal(tmp_path)
    assert not fresh.is_done("a.jpg", HASH)
    assert fresh.is_done("sub/b.jpg", HASH)


@pytest.mark.parametrize(
    "line",
    [
        b"garbage that is not json\n",
        b"\x00\xff\t[]\n",
        b"[1, 2, 3]\t[]\n",
        b'{"rel": 7}\t[]\n',
        b"\n",
    ],
)
def test_a_garbage_line_is_skipped_and_the_rest_still_read(tmp_path: Path, line: bytes) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    journal.close()
    with segment_of(journal).open("ab") as f:
        f.write(line)
    fresh = Journal(tmp_path)
    record(fresh, 1)
    again = Journal(tmp_path)
    assert again.is_done("a.jpg", HASH) and again.is_done("sub/b.jpg", HASH)
    assert [i["file_name"] for i in again.assemble(RELS, HASH)[1]] == RELS[:2]


def header_line(**changes) -> bytes:
    """A record line for a.jpg with valid JSON, some fields changed (to wrong types)."""
    body = b"[]"
    header = {"rel": "a.jpg", "settings_hash": HASH, "source": "/in/a.jpg", "image_id": 1,
              "width": 11, "height": 9, "num_detections": 0, "crc": zlib.crc32(body)}  # fmt: skip
    header.update(changes)
    return json.dumps(header).encode() + b"\t" + body + b"\n"


@pytest.mark.parametrize(
    "changes",
    [
        {"image_id": "1"},
        {"width": None},
        {"height": 9.5},
        {"settings_hash": ["settings-a"]},
        {"num_detections": True},
        {"crc": "0"},
        {"source": 3},
    ],
)
def test_a_record_with_wrong_types_counts_as_not_done(tmp_path: Path, changes: dict) -> None:
    state = tmp_path / ".mrcnn" / "journal"
    state.mkdir(parents=True)
    (state / "00000000000000000001-h-1-ab.jsonl").write_bytes(header_line(**changes))
    journal = Journal(tmp_path)
    assert not journal.is_done("a.jpg", HASH)
    assert journal.load("a.jpg") is None
    assert journal.assemble(["a.jpg"], HASH) == ([], [])


def test_the_well_typed_line_of_the_test_above_is_done(tmp_path: Path) -> None:
    state = tmp_path / ".mrcnn" / "journal"
    state.mkdir(parents=True)
    (state / "00000000000000000001-h-1-ab.jsonl").write_bytes(header_line())
    assert Journal(tmp_path).is_done("a.jpg", HASH)


def test_results_that_are_valid_json_of_the_wrong_shape_are_left_out(tmp_path: Path) -> None:
    body = b'{"not": "a list"}'
    header = {"rel": "a.jpg", "settings_hash": HASH, "source": "/in/a.jpg", "image_id": 1,
              "width": 11, "height": 9, "num_detections": 0, "crc": zlib.crc32(body)}  # fmt: skip
    state = tmp_path / ".mrcnn" / "journal"
    state.mkdir(parents=True)
    (state / "00000000000000000001-h-1-ab.jsonl").write_bytes(
        json.dumps(header).encode() + b"\t" + body + b"\n"
    )
    journal = Journal(tmp_path)
    assert journal.load("a.jpg") is None
    assert journal.assemble(["a.jpg"], HASH, image_ids={"a.jpg": 5}) == ([], [])


def test_a_line_cut_short_by_a_killed_writer_is_not_done(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    record(journal, 1)
    journal.close()
    segment = segment_of(journal)
    segment.write_bytes(segment.read_bytes()[:-20])
    fresh = Journal(tmp_path)
    assert fresh.is_done("a.jpg", HASH) and not fresh.is_done("sub/b.jpg", HASH)


def test_a_forgotten_image_stays_forgotten_for_the_next_process(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record(journal, 0)
    journal.forget("a.jpg")
    assert not Journal(tmp_path).is_done("a.jpg", HASH)


def test_the_last_record_of_an_image_wins_across_runs(tmp_path: Path) -> None:
    record(Journal(tmp_path), 0, settings="settings-old")  # first run
    second = Journal(tmp_path)
    assert not second.is_done("a.jpg", HASH)
    record(second, 0)
    third = Journal(tmp_path)
    assert third.is_done("a.jpg", HASH) and not third.is_done("a.jpg", "settings-old")


def test_refresh_sees_what_another_process_appended(tmp_path: Path) -> None:
    driver = Journal(tmp_path)
    assert not driver.is_done("a.jpg", HASH)  # index built now
    record(Journal(tmp_path), 0)  # a worker's own journal and segment
    assert not driver.is_done("a.jpg", HASH)
    driver.refresh()
    assert driver.is_done("a.jpg", HASH)


def test_records_of_an_older_version_are_still_read(tmp_path: Path) -> None:
    legacy = tmp_path / ".mrcnn" / "records" / "sub" / "b.jpg.json"
    legacy.parent.mkdir(parents=True)
    results = results_for(1, 2)
    legacy.write_text(json.dumps({"rel": "sub/b.jpg", "source": "/in/sub/b.jpg",
                                  "image_id": 2, "width": 11, "height": 9, "num_detections": 2,
                                  "results": results, "settings_hash": HASH}))  # fmt: skip
    journal = Journal(tmp_path)
    assert journal.is_done("sub/b.jpg", HASH)
    assert journal.assemble(RELS, HASH)[0] == results
    journal.forget("sub/b.jpg")
    assert not Journal(tmp_path).is_done("sub/b.jpg", HASH)


def test_clear_with_rels_forgets_only_those(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(3):
        record(journal, i)
    journal.clear(["a.jpg", "c.png"])
    fresh = Journal(tmp_path)
    assert [fresh.is_done(rel, HASH) for rel in RELS] == [False, True, False]


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
    assert write_failures(tmp_path, failures) is None  # nothing went wrong writing it
    lines = (tmp_path / FAILURES_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"path": "/in/bad.jpg", "reason": "cannot decode"},
        {"path": "x.png", "reason": "empty"},
    ]


def test_a_failures_file_that_cannot_be_written_is_returned_as_a_failure(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the folder should be")
    problem = write_failures(tmp_path / "taken", [FailedItem("x.png", "empty")])
    assert problem is not None and problem.path == tmp_path / "taken" / FAILURES_FILE
    assert problem.reason.startswith("cannot write: ")


def test_a_run_without_failures_removes_a_stale_failures_file(tmp_path: Path) -> None:
    write_failures(tmp_path, [FailedItem("x.png", "empty")])
    assert write_failures(tmp_path, []) is None
    assert not (tmp_path / FAILURES_FILE).exists()


# --- streaming assembly ------------------------------------------------------------


def record_many(journal: Journal, n: int) -> list[str]:
    rels = [f"d{i % 7}/img{i}.jpg" for i in range(n)]
    for i in reversed(range(n)):  # recorded out of order, as threads finish
        journal.record(rels[i], source=f"/in/{rels[i]}", image_id=i + 1, width=11, height=9,
                       results=results_for(i, i + 1), settings_hash=HASH)  # fmt: skip
    return rels


@pytest.mark.parametrize("remap", [False, True])
def test_streamed_files_equal_the_in_memory_assembly_byte_for_byte(
    tmp_path: Path, remap: bool
) -> None:
    journal = Journal(tmp_path)
    rels = record_many(journal, 40)
    journal.forget(rels[3])
    record(journal, 0, settings="settings-old")
    order = rels[::2] + ["a.jpg", "never-run.jpg"] + rels[1::2]
    ids = {rel: 1000 + k for k, rel in enumerate(order)} if remap else None
    results, images = journal.assemble(order, HASH, ids)
    write_predictions(tmp_path / "old_predictions.json", results)
    write_images_file(tmp_path / "old_images.json", images)
    counts = journal.write_coco(tmp_path / "p.json", tmp_path / "i.json", order, HASH, ids)
    assert (tmp_path / "p.json").read_bytes() == (tmp_path / "old_predictions.json").read_bytes()
    assert (tmp_path / "i.json").read_bytes() == (tmp_path / "old_images.json").read_bytes()
    assert (counts.images, counts.detections) == (len(images), len(results))
    assert [i["file_name"] for i in images] == [r for r in order if r in rels and r != rels[3]]


def test_streamed_files_of_nothing_are_empty_lists(tmp_path: Path) -> None:
    counts = Journal(tmp_path).write_coco(tmp_path / "p.json", tmp_path / "i.json", RELS, HASH)
    assert (tmp_path / "p.json").read_text() == "[]" == (tmp_path / "i.json").read_text()
    assert (counts.images, counts.detections) == (0, 0)


def test_images_with_no_detections_add_nothing_to_predictions(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.record("e.jpg", source="e", image_id=1, width=2, height=2, results=[],
                   settings_hash=HASH)  # fmt: skip
    record(journal, 0)
    journal.write_coco(tmp_path / "p.json", tmp_path / "i.json", ["e.jpg", "a.jpg"], HASH)
    assert json.loads((tmp_path / "p.json").read_text()) == results_for(0, 1)
    assert len(json.loads((tmp_path / "i.json").read_text())) == 2


# --- concurrent writers ------------------------------------------------------------


def _append_records(out: str, prefix: str, n: int) -> None:
    journal = Journal(Path(out))
    for i in range(n):
        rel = f"{prefix}/{i}.jpg"
        journal.record(rel, source=rel, image_id=i, width=11, height=9,
                       results=results_for(i, i), settings_hash=HASH)  # fmt: skip


def test_two_processes_appending_at_once_leave_every_record_readable(tmp_path: Path) -> None:
    n = 300
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_records, args=(str(tmp_path), p, n)) for p in "ab"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    journal = Journal(tmp_path)
    rels = [f"{p}/{i}.jpg" for p in "ab" for i in range(n)]
    assert all(journal.is_done(rel, HASH) for rel in rels)
    results, images = journal.assemble(rels, HASH)
    assert len(images) == 2 * n
    assert results == [r for _ in "ab" for i in range(n) for r in results_for(i, i)]


def test_threads_of_one_process_share_its_segment_safely(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    journal = Journal(tmp_path)
    rels = [f"t/{i}.jpg" for i in range(200)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: journal.record(rels[i], source="s", image_id=i, width=1,
                                               height=1, results=results_for(i, i),
                                               settings_hash=HASH), range(200)))  # fmt: skip
    assert all(Journal(tmp_path).is_done(rel, HASH) for rel in rels)


# --- the index agrees with a simple model over any sequence of runs ----------------

_ops = st.lists(
    st.tuples(st.sampled_from(["record", "forget"]), st.integers(0, 5), st.sampled_from("xy")),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(runs=st.lists(_ops, min_size=1, max_size=4))
def test_every_run_sees_the_last_word_of_the_runs_before(tmp_path_factory, runs) -> None:
    """Each run has two writers (think: two Ray workers) with disjoint images."""
    out = tmp_path_factory.mktemp("prop")
    model: dict[str, str | None] = {}
    for ops in runs:
        writers = {"even": Journal(out), "odd": Journal(out)}
        for op, image, settings_name in ops:
            rel = f"{image}.jpg"
            journal = writers["even" if image % 2 == 0 else "odd"]
            if op == "record":
                journal.record(rel, source=rel, image_id=image, width=1, height=1,
                               results=[], settings_hash=settings_name)  # fmt: skip
                model[rel] = settings_name
            else:
                journal.forget(rel)
                model[rel] = None
        for journal in writers.values():
            journal.close()
        fresh = Journal(out)
        for rel, expected in model.items():
            for settings_name in "xy":
                assert fresh.is_done(rel, settings_name) == (expected == settings_name)
