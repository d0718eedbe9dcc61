"""Tracking: ids that follow objects, colours that follow ids, MOT and tracks files."""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from helpers import invoke_cli, json_summary

from mrcnn_cli.config import TrackSettings, VideoConfig
from mrcnn_cli.detections import Detections
from mrcnn_cli.sources import SourceItem
from mrcnn_cli.tracking import UNTRACKED, Tracker, TrackTable, mot_lines
from mrcnn_cli.train.synthetic_video import (
    MovingObject,
    random_objects,
    render_clip,
    write_clip,
    write_truth,
)
from mrcnn_cli.video.reader import Frame
from mrcnn_cli.video.sink import FrameSink
from mrcnn_cli.writers.overlay import annotate, label_text, track_color

NAMES = ("__background__", "circle", "square", "triangle")
IDS = (0, 1, 2, 3)


def boxes_at(*boxes: tuple[float, float, float, float], labels=None, scores=None) -> Detections:
    n = len(boxes)
    return Detections(list(boxes) or np.zeros((0, 4)), scores or [0.95] * n,
                      labels or [1] * n, None, NAMES, IDS)  # fmt: skip


def square(cx: float, cy: float, half: float = 10) -> tuple[float, float, float, float]:
    return (cx - half, cy - half, cx + half, cy + half)


def follow(frames: list[Detections], settings: TrackSettings | None = None) -> list[np.ndarray]:
    tracker = Tracker(settings)
    return [tracker.update(d).track_ids for d in frames]


# --- the tracker ----------------------------------------------------------------------


def test_ids_are_given_from_the_second_frame_and_stay():
    frames = [boxes_at(square(20 + 3 * t, 30), square(90 - 3 * t, 80)) for t in range(8)]
    ids = follow(frames)
    assert (ids[0] == UNTRACKED).all()
    assert sorted(ids[1].tolist()) == [1, 2]
    assert all((i == ids[1]).all() for i in ids[1:])


def test_detections_keep_their_order_and_everything_else():
    dets = boxes_at(square(20, 20), square(60, 60), labels=[2, 1], scores=[0.7, 0.9])
    tracker = Tracker()
    tracker.update(dets)
    out = tracker.update(dets)
    np.testing.assert_array_equal(out.boxes, dets.boxes)
    np.testing.assert_array_equal(out.labels, dets.labels)
    np.testing.assert_array_equal(out.scores, dets.scores)


@pytest.mark.parametrize("labels", [[1, 2], [1, 1]], ids=["two classes", "one class"])
def test_an_object_crossing_another_keeps_its_id(labels):
    # two objects on crossing paths: their boxes overlap for several frames
    frames = [boxes_at(square(10 + 4 * t, 50), square(110 - 4 * t, 56), labels=labels)
              for t in range(26)]  # fmt: skip
    ids = follow(frames)
    first = ids[1]
    assert all((i == first).all() for i in ids[1:]), [i.tolist() for i in ids]


def test_an_object_away_for_fewer_model_frames_than_the_buffer_keeps_its_id():
    frames = [boxes_at(square(20 + 2 * t, 40)) for t in range(6)]
    frames += [boxes_at() for _ in range(5)]  # left the view
    frames += [boxes_at(square(20 + 2 * t, 40)) for t in range(11, 16)]
    ids = follow(frames, TrackSettings(buffer=10))
    assert ids[-1].tolist() == ids[1].tolist() == [1]


def test_an_object_away_for_longer_than_the_buffer_gets_a_new_id():
    frames = [boxes_at(square(20 + 2 * t, 40)) for t in range(6)]
    frames += [boxes_at() for _ in range(8)]
    frames += [boxes_at(square(20 + 2 * t, 40)) for t in range(14, 19)]
    ids = follow(frames, TrackSettings(buffer=3))
    assert ids[1].tolist() == [1] and ids[-1].tolist() == [2]


def test_a_track_never_changes_class():
    frames = [boxes_at(square(40, 40), labels=[1]) for _ in range(4)]
    frames += [boxes_at(square(40, 40), labels=[2]) for _ in range(4)]
    tracker = Tracker()
    outs = [tracker.update(d) for d in frames]
    first, later = outs[2], outs[-1]
    assert first.track_ids.tolist() == [1] and first.labels.tolist() == [1]
    assert later.track_ids.tolist() != [1] and later.labels.tolist() == [2]


def test_one_object_found_as_two_classes_is_tracked_once():
    both = boxes_at(square(40, 40), square(41, 40), labels=[1, 2], scores=[0.9, 0.8])
    tracker = Tracker()
    outs = [tracker.update(both) for _ in range(4)]
    assert outs[-1].track_ids.tolist() == [1, UNTRACKED]  # the lower score takes no track
    assert len(outs[-1]) == 2  # still drawn and written


# A red and a green square on grey, with their masks: what re-identification looks at.
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30)}


def painted(*objects: tuple[str, float, float]) -> tuple[Detections, np.ndarray]:
    image = np.full((100, 120, 3), 128, np.uint8)
    boxes, masks = [], []
    for colour, cx, cy in objects:
        box = square(cx, cy)
        x0, y0, x1, y1 = (int(v) for v in box)
        image[y0:y1, x0:x1] = COLOURS[colour]
        mask = np.zeros(image.shape[:2], bool)
        mask[y0:y1, x0:x1] = True
        boxes.append(box)
        masks.append(mask)
    n = len(objects)
    dets = Detections(boxes or np.zeros((0, 4)), [0.95] * n, [1] * n,
                      np.array(masks) if n else None, NAMES, IDS)  # fmt: skip
    return dets, image


def lost_and_found(colour_back: str, with_frames: bool = True) -> list[int]:
    """A red square stands still, is hidden for 5 frames and is then seen 25 px away (too
    far for ByteTrack's box IoU), coloured `colour_back`; its ids in the last frame."""
    frames = [painted(("red", 30, 50)) for _ in range(5)]
    frames += [painted() for _ in range(5)]
    frames += [painted((colour_back, 55, 50)) for _ in range(4)]
    tracker = Tracker()
    outs = [tracker.update(d, image if with_frames else None) for d, image in frames]
    return outs[1].track_ids.tolist() + outs[-1].track_ids.tolist()


def test_an_object_byte_track_lost_keeps_its_id_when_its_colours_come_back():
    assert lost_and_found("red") == [1, 1]


def test_another_object_where_a_lost_one_was_gets_a_new_id():
    assert lost_and_found("green") == [1, 2]


def test_without_the_frames_there_is_no_re_identification():
    assert lost_and_found("red", with_frames=False) == [1, 2]


def test_ocsort_is_there_as_the_other_tracker():
    frames = [boxes_at(square(20 + 3 * t, 30)) for t in range(8)]
    ids = follow(frames, TrackSettings(method="ocsort", min_frames=1))
    assert ids[-1].tolist() == [1]


# --- what is written --------------------------------------------------------------------


def test_coco_entries_carry_the_track_id():
    dets = boxes_at(square(20, 20), square(60, 60))
    dets.track_ids = np.array([7, UNTRACKED])
    assert [e["track_id"] for e in dets.to_coco(1)] == [7, -1]


def test_mot_lines_hold_tracked_detections_with_frames_from_one():
    dets = Detections([[10, 20, 40, 60], [0, 0, 5, 5]], [0.9, 0.8], [1, 1], None, NAMES, IDS,
                      track_ids=[3, UNTRACKED])  # fmt: skip
    assert mot_lines(0, dets) == ["1,3,10.00,20.00,30.00,40.00,0.90000,-1,-1,-1"]


def test_track_table_sums_a_track_over_the_frames_it_was_seen():
    table = TrackTable()
    for index in range(3):
        dets = Detections([[0, 0, 10, 10]], [0.5 + 0.1 * index], [2], None, NAMES, IDS,
                          track_ids=[4])  # fmt: skip
        table.add(index, index / 10, dets)
    (row,) = table.csv_rows(NAMES)
    assert row == [4, "square", 1, 3, 0.0, 0.2, 3, 0.6, 0.0]
    assert table.per_class(NAMES) == {"square": 1}


def test_a_label_names_the_track():
    assert label_text("car", 0.934, 17) == "#17 car 0.93"
    assert label_text("car", 0.934) == "car 0.93"


def test_colours_follow_the_track_not_the_class():
    image = np.full((60, 120, 3), 100, np.uint8)
    masks = np.zeros((2, 60, 120), bool)
    masks[0, 10:50, 10:50] = masks[1, 10:50, 70:110] = True
    dets = Detections([[10, 10, 50, 50], [70, 10, 110, 50]], [0.9, 0.9], [1, 1], masks, NAMES,
                      IDS, track_ids=[1, 2])  # fmt: skip
    from mrcnn_cli.config import OverlayStyle

    out = annotate(image, dets, OverlayStyle(show_boxes=False, show_labels=False))
    for i, x in enumerate((30, 90)):
        expected = np.round(0.5 * 100 + 0.5 * np.array(track_color(i + 1)))
        np.testing.assert_allclose(out[30, x], expected, atol=1)
    assert track_color(1) != track_color(2)


def test_frames_between_model_frames_reuse_the_tracked_result(tmp_path, monkeypatch):
    cfg = VideoConfig(out=tmp_path, save=("mot",), track=TrackSettings())
    item = SourceItem(Path("x.mp4"), PurePosixPath("x.mp4"), "video")
    sink = FrameSink(cfg, item, None, None, None, None)  # type: ignore[arg-type]
    calls = []
    real = sink.tracker.update
    monkeypatch.setattr(sink.tracker, "update", lambda d, im: calls.append(1) or real(d, im))
    image = np.zeros((8, 8, 3), np.uint8)
    keyed = boxes_at(square(4, 4, 2))
    for index in range(3):  # --stride 3: one model result for three frames
        sink.write((Frame(index, index / 10, image), keyed))
    assert len(calls) == 1  # the tracker's buffers count model frames


# --- whole runs on a generated clip ------------------------------------------------------


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("clip")
    objects = random_objects(np.random.default_rng(3), 3, 128, (1.0, 2.5))
    clip = render_clip(objects, 40, 128, seed=3)
    return write_clip(root / "moving.mp4", clip.frames), write_truth(root / "gt.txt", clip)


@pytest.fixture(scope="module")
def tracked_run(clip_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    args = ["video", clip_files[0], "--model", "demo", "--out", out, "--track",
            "--save", "video,coco,mot", "--trail", "5", "--json"]  # fmt: skip
    result = invoke_cli(args)
    assert result.exit_code == 0, result.output
    return out, json_summary(result)


def test_a_tracked_clip_scores_high_idf1_and_mota_against_its_ground_truth(clip_files, tracked_run):
    from trackers.eval import evaluate_mot_sequence

    out, _ = tracked_run
    result = evaluate_mot_sequence(clip_files[1], out / "moving.mot.txt",
                                   metrics=["CLEAR", "Identity"])  # fmt: skip
    assert result.Identity.IDF1 >= 0.9 and result.CLEAR.MOTA >= 0.9, result.table()


def test_the_tracks_file_has_one_row_per_track_and_the_summary_counts_them(tracked_run):
    out, summary = tracked_run
    with open(out / "moving.tracks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and len({r["track_id"] for r in rows}) == len(rows)
    assert sum(summary["tracks"].values()) == len(rows)
    assert all(int(r["first_frame"]) <= int(r["last_frame"]) for r in rows)


def test_coco_results_of_a_tracked_video_carry_track_ids(tracked_run):
    out, _ = tracked_run
    results = json.loads((out / "moving.predictions.json").read_text())
    assert results and all("track_id" in r for r in results)
    assert {r["track_id"] for r in results} - {-1}


def test_stride_keeps_the_ids_of_the_model_frame(clip_files, tmp_path):
    out = tmp_path / "out"
    args = ["video", clip_files[0], "--model", "demo", "--out", out, "--track", "--stride", "2",
            "--save", "mot"]  # fmt: skip
    assert invoke_cli(args).exit_code == 0
    by_frame: dict[int, list[str]] = {}
    for line in (out / "moving.mot.txt").read_text().splitlines():
        frame, rest = line.split(",", 1)
        by_frame.setdefault(int(frame), []).append(rest)
    assert len(by_frame) >= 30
    for frame in range(3, 40, 2):  # frame 2k+2 reuses frame 2k+1 (frames count from 1)
        assert by_frame.get(frame + 1) == by_frame.get(frame)


def test_a_rerun_after_an_interrupted_run_writes_the_same_tracks(clip_files, tmp_path):
    out = tmp_path / "out"
    args = ["video", clip_files[0], "--model", "demo", "--out", out, "--track", "--save", "mot"]
    invoke_cli(args)
    first = (out / "moving.mot.txt").read_bytes()
    (out / "moving.mot.txt").unlink()  # as if killed before the file was renamed into place
    summary = json_summary(invoke_cli([*args, "--json"]))
    assert summary["processed"] > 0
    assert (out / "moving.mot.txt").read_bytes() == first


def test_tracking_settings_are_part_of_the_resume_settings(clip_files, tmp_path):
    out = tmp_path / "out"
    args = ["video", clip_files[0], "--model", "demo", "--out", out, "--track", "--save", "mot",
            "--json"]  # fmt: skip
    invoke_cli(args)
    assert json_summary(invoke_cli(args))["skipped"] > 0
    assert json_summary(invoke_cli([*args, "--track-buffer", "5"]))["processed"] > 0


def test_mot_output_without_tracking_is_a_usage_error(clip_files, tmp_path):
    result = invoke_cli(["video", clip_files[0], "--model", "demo", "--out", tmp_path,
                         "--save", "mot"])  # fmt: skip
    assert result.exit_code == 2 and "--track" in result.stderr


def test_a_moving_object_is_rendered_where_its_ground_truth_says():
    clip = render_clip([MovingObject(2, 30.0, (40.0, 40.0), (2.0, 0.0))], 5, 128, seed=0)
    boxes = [truth[0][2] for truth in clip.truth]
    assert [b[0] - boxes[0][0] for b in boxes] == [0, 2, 4, 6, 8]


def test_the_report_lists_each_videos_tracks_and_links_its_tracks_file(clip_files, tmp_path):
    from test_report import page_data

    out = tmp_path / "out"
    args = ["video", clip_files[0], "--model", "demo", "--out", out, "--track", "--save",
            "mot,report", "--json"]  # fmt: skip
    summary = json_summary(invoke_cli(args))
    (row,) = page_data((out / "report.html").read_text(encoding="utf-8"))["videos"]
    assert row["tracks"] == summary["tracks"] and row["tracks_href"] == "moving.tracks.csv"
    assert (out / row["tracks_href"]).is_file()
