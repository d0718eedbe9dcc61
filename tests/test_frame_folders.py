"""A folder of frames is a video to `mrcnn video` (and `segment_video`), and `mrcnn synth
--video` writes clips with exact ground truth that the tracker is scored against.

Frames are a few tiny PNGs; the model is the seeded, untrained compact checkpoint with
--score-thr 0 (deterministic detections on every frame), or the bundled demo model where
tracking quality is measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers import invoke_cli, json_summary

from mrcnn_cli.sources import collect_sources
from mrcnn_cli.video import DecodeReport, FrameWindow
from mrcnn_cli.video.frames import read_folder_frames

VIDEO_KINDS = frozenset({"video", "frames"})  # what `mrcnn video` collects


def write_frames(folder: Path, names: list[str], size: tuple[int, int] = (64, 48)) -> Path:
    """PNG frames whose pixels all hold their position in `names` (0, 1, 2 ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for value, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((height, width, 3), value, np.uint8))
    return folder


def values(frames) -> list[int]:
    return [int(f.image[0, 0, 0]) for f in frames]


@pytest.fixture
def lite(tiny_checkpoint: Path) -> list[str]:
    return ["--model", str(tiny_checkpoint), "--score-thr", "0", "--max-det", "3", "--quiet"]


def test_frames_are_read_in_natural_name_order_at_the_given_rate(tmp_path):
    names = ["frame_1.png", "frame_2.png", "frame_10.png"]
    folder = write_frames(tmp_path / "f", names)
    frames = list(read_folder_frames(folder, FrameWindow(), DecodeReport(), fps=10))
    assert values(frames) == [0, 1, 2]  # frame_2 before frame_10
    assert [f.source for f in frames] == names
    assert [round(f.time, 3) for f in frames] == [0.0, 0.1, 0.2]


def test_start_end_and_max_frames_select_frames_by_their_time(tmp_path):
    folder = write_frames(tmp_path / "f", [f"{i}.png" for i in range(6)])
    window = FrameWindow(start=0.2, end=0.5, max_frames=2)
    assert values(read_folder_frames(folder, window, DecodeReport(), fps=10)) == [2, 3]


def test_a_frame_of_another_size_is_scaled_to_the_first_frames_size(tmp_path):
    folder = write_frames(tmp_path / "f", ["a.png"], size=(64, 48))
    write_frames(tmp_path / "g", ["b.png"], size=(30, 20))
    (tmp_path / "g" / "b.png").rename(folder / "b.png")
    frames = list(read_folder_frames(folder, FrameWindow(), DecodeReport()))
    assert [f.image.shape for f in frames] == [(48, 64, 3), (48, 64, 3)]


def test_an_unreadable_frame_is_left_out_and_named_in_the_report(tmp_path):
    folder = write_frames(tmp_path / "f", ["1.png", "2.png", "3.png"])
    (folder / "2.png").write_bytes(b"not a png")
    report = DecodeReport()
    frames = list(read_folder_frames(folder, FrameWindow(), report, fps=10))
    assert values(frames) == [0, 2] and [f.index for f in frames] == [0, 1]
    assert frames[1].time == pytest.approx(0.2)  # later frames keep their time
    assert report.problem is not None and "2.png" in report.problem


def test_video_collects_folders_of_frames_as_clips_and_videos_as_videos(tmp_path):
    root = tmp_path / "root"
    write_frames(root / "cam1", ["1.png", "2.png"])
    write_frames(root / "cam2", ["1.jpg"])
    (root / "clip.mp4").write_bytes(b"")  # a video in a folder: its images are no clip
    write_frames(root, ["poster.png"])
    items, failures = collect_sources([root], VIDEO_KINDS)
    assert not failures
    assert [(str(i.rel), i.kind) for i in items] == [
        ("cam1", "frames"), ("cam2", "frames"), ("clip.mp4", "video"),
    ]  # fmt: skip


def test_a_folder_of_frames_given_itself_is_one_clip_named_after_it(tmp_path):
    folder = write_frames(tmp_path / "shots", ["1.png"])
    items, _ = collect_sources([folder], VIDEO_KINDS)
    assert [(str(i.rel), i.kind, i.path) for i in items] == [("shots", "frames", folder)]


def test_video_encodes_a_folder_of_frames_with_every_output(tmp_path, lite):
    folder = write_frames(tmp_path / "frames", [f"frame_{i}.png" for i in (1, 2, 10)])
    out = tmp_path / "out"
    result = invoke_cli(["video", folder, "--fps", 5, "--out", out, "--save", "video,coco,mot",
                         "--track", "--json", *lite])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json_summary(result)["processed"] == 3
    with av.open(str(out / "frames.mp4")) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == 3
        assert stream.average_rate == 5
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 48)
    images = json.loads((out / "frames.images.json").read_text())
    assert [i["frame_file"] for i in images] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    assert (out / "frames.mot.txt").is_file() and (out / "frames.tracks.csv").is_file()


def test_a_folder_of_frames_is_30_frames_per_second_without_fps(tmp_path, lite):
    folder = write_frames(tmp_path / "frames", ["1.png", "2.png"])
    out = tmp_path / "out"
    assert invoke_cli(["video", folder, "--out", out, "--save", "coco", *lite]).exit_code == 0
    images = json.loads((out / "frames.images.json").read_text())
    assert [i["timestamp"] for i in images] == [0.0, round(1 / 30, 6)]


def test_a_done_folder_is_skipped_and_redone_when_a_frame_or_the_fps_changes(tmp_path, lite):
    folder = write_frames(tmp_path / "frames", ["1.png", "2.png"])
    run = ["video", folder, "--out", tmp_path / "out", "--save", "coco", "--json", *lite]
    assert json_summary(invoke_cli(run))["processed"] == 2
    assert json_summary(invoke_cli(run))["skipped"] == 2
    assert json_summary(invoke_cli([*run, "--fps", 12]))["processed"] == 2
    write_frames(tmp_path / "frames", ["1.png", "2.png", "3.png"])  # a frame added
    assert json_summary(invoke_cli([*run, "--fps", 12]))["processed"] == 3


def test_an_unreadable_frame_fails_the_clip_by_name_and_the_rest_is_written(tmp_path, lite):
    folder = write_frames(tmp_path / "frames", ["1.png", "2.png", "3.png"])
    (folder / "3.png").write_bytes(b"")
    out = tmp_path / "out"
    result = invoke_cli(["video", folder, "--out", out, "--save", "coco", "--json", *lite])
    summary = json.loads(result.stdout)
    assert result.exit_code == 1 and summary["processed"] == 2
    (failure,) = summary["failures"]
    assert "3.png" in failure["reason"]
    assert len(json.loads((out / "frames.images.json").read_text())) == 2


def test_segment_still_segments_the_images_of_a_folder_one_by_one(tmp_path, lite):
    folder = write_frames(tmp_path / "frames", ["1.png", "2.png"])
    out = tmp_path / "out"
    summary = json_summary(invoke_cli(["segment", folder, "--out", out, "--json", *lite]))
    assert (summary["unit"], summary["processed"]) == ("images", 2)
    assert not (out / "frames.mp4").exists()


# --- mrcnn synth --video ------------------------------------------------------------------


def test_synth_video_writes_each_clip_and_its_ground_truth_the_same_way_twice(tmp_path):
    args = ["synth", "--video", "--clips", 2, "--frames", 4, "--size", 64, "--seed", 7]
    for out in (tmp_path / "a", tmp_path / "b"):
        assert invoke_cli([*args, "--out", out]).exit_code == 0
    for name in ("clip00", "clip01"):
        assert (tmp_path / "a" / f"{name}.mp4").is_file()
        truth = (tmp_path / "a" / "gt" / f"{name}.mot.txt").read_text()
        assert truth == (tmp_path / "b" / "gt" / f"{name}.mot.txt").read_text()
        frames = {int(line.split(",")[0]) for line in truth.splitlines()}
        assert frames <= {1, 2, 3, 4} and frames


@pytest.mark.slow
def test_a_synth_frame_folder_clip_is_tracked_and_scores_against_its_ground_truth(tmp_path):
    from trackers.eval import evaluate_mot_sequence

    clips = tmp_path / "clips"
    assert invoke_cli(["synth", "--video", "--image-frames", "--clips", 1, "--frames", 30,
                       "--objects", 3, "--seed", 3, "--out", clips]).exit_code == 0  # fmt: skip
    assert len(list((clips / "clip00").glob("*.png"))) == 30
    out = tmp_path / "out"
    result = invoke_cli(["video", clips, "--model", "demo", "--track", "--save", "mot",
                         "--out", out, "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = evaluate_mot_sequence(clips / "gt" / "clip00.mot.txt", out / "clip00.mot.txt",
                                   metrics=["CLEAR", "Identity"])  # fmt: skip
    assert scores.Identity.IDF1 >= 0.85 and scores.CLEAR.MOTA >= 0.85, scores.table()
