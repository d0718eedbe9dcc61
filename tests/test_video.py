"""`mrcnn video`: every input frame comes out annotated, at the input's size and rate, with
its audio; per-frame results are exactly what `mrcnn segment` finds on the same frames; bad
files are reported without leaving broken outputs.

The model is the seeded, untrained compact checkpoint from conftest with --score-thr 0, so
it finds (meaningless but deterministic) instances on every frame; runs are a few frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers import VIDEOS, invoke_cli, needs_videos

from mrcnn_cli import video
from mrcnn_cli.detections import Detections
from mrcnn_cli.video import DecodeReport, Frame, FrameWindow, decode_frames, predict_frames
from mrcnn_cli.writers.masks import read_id_map

PETS = VIDEOS / "vtest_pets2009_people_15s.mp4"  # 150 frames, 10 fps, 480x360
INTEL = VIDEOS / "intel_person_bicycle_car_10s.mp4"  # 126 frames, 12 fps, 768x432


def lite_args(checkpoint: Path) -> list[str]:
    """The tiny checkpoint with every detection kept (random weights score low)."""
    return ["--model", str(checkpoint), "--score-thr", "0", "--max-det", "5", "--quiet"]


@pytest.fixture
def lite(tiny_checkpoint: Path) -> list[str]:
    return lite_args(tiny_checkpoint)


@pytest.fixture(scope="module")
def pets_run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run over 3 frames of the PETS clip with every output; several tests read it."""
    out = tmp_path_factory.mktemp("pets")
    args = ["video", PETS, "--out", out, "--max-frames", 3, "--save", "video,masks,coco"]
    result = invoke_cli([*args, "--json", *lite_args(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@dataclass(frozen=True)
class VideoFacts:
    frames: int
    width: int
    height: int
    fps: Fraction
    codec: str
    audio_codec: str | None


def read_facts(path: Path) -> VideoFacts:
    """What a player sees: frames counted by decoding them all, not the header."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        audio = container.streams.audio
        return VideoFacts(
            frames,
            stream.codec_context.width,
            stream.codec_context.height,
            stream.average_rate,
            stream.codec_context.name,
            audio[0].codec_context.name if audio else None,
        )


def make_clip(
    path: Path,
    frames: int = 4,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    audio: str | None = None,
    rotation: int | None = None,
) -> Path:
    """A small H.264 clip: a bar that grows each frame, a white top-left corner marker,
    and optionally a 440 Hz tone (`audio` is the audio encoder) or a display rotation."""
    width, height = size
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = out.add_stream(audio, rate=16000)
            sound.layout = "mono"
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : 4 + 7 * i] = (200, 80, 40)
            image[:4, :4] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        if sound is not None:
            t = np.arange(16000 * frames // fps) / 16000
            tone = 0.3 * np.sin(2 * np.pi * 440 * t)
            fmt = sound.codec_context.format.name
            data = ((tone + 1) * 127.5).astype(np.uint8) if fmt == "u8" else tone.astype(np.float32)
            samples = av.AudioFrame.from_ndarray(data[None], format=fmt, layout="mono")
            samples.sample_rate, samples.pts = 16000, 0
            out.mux(sound.encode(samples))
            out.mux(sound.encode(None))
        out.mux(video.encode(None))
    return path


def json_summary(result) -> dict:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def by_image(results: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {}
    for entry in results:
        grouped.setdefault(entry["image_id"], []).append(entry)
    return grouped


def without_image_id(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "image_id"} for e in entries]


def leftovers(folder: Path) -> list[str]:
    """Temp files an interrupted or failed write would leave (atomic writes use '.name.*')."""
    return [p.name for p in folder.rglob(".*") if p.is_file() and ".mrcnn" not in p.parts]


# --- output video ------------------------------------------------------------------


@needs_videos
def test_output_has_one_frame_per_input_frame_at_the_inputs_size_and_rate(pets_run):
    out, _ = pets_run
    facts = read_facts(out / "vtest_pets2009_people_15s.mp4")
    assert (facts.frames, facts.width, facts.height, facts.fps) == (3, 480, 360, 10)
    assert facts.codec == "h264"
    assert leftovers(out) == []


@needs_videos
def test_stride_keeps_every_frame_and_frames_between_reuse_the_keyed_result(
    run_cli, lite, tmp_path
):
    args = ["--max-frames", 5, "--stride", 2, "--save", "video,coco"]
    result = run_cli(["video", INTEL, "--out", tmp_path, *args, *lite])
    assert result.exit_code == 0, result.output
    facts = read_facts(tmp_path / "intel_person_bicycle_car_10s.mp4")
    assert (facts.frames, facts.width, facts.height, facts.fps) == (5, 768, 432, 12)

    images = json.loads((tmp_path / "intel_person_bicycle_car_10s.images.json").read_text())
    assert [im["frame_index"] for im in images] == [0, 1, 2, 3, 4]
    results = by_image(
        json.loads((tmp_path / "intel_person_bicycle_car_10s.predictions.json").read_text())
    )
    assert sorted(results) == [1, 2, 3, 4, 5]  # every frame lists its detections
    frame = {i: without_image_id(results[i + 1]) for i in range(5)}
    assert frame[1] == frame[0] and frame[3] == frame[2]
    assert frame[2] != frame[0] and frame[4] != frame[2]  # keyed frames are predicted anew


@pytest.mark.slow
@needs_videos
def test_start_and_end_select_the_frames_between_them(run_cli, lite, tmp_path):
    args = ["--start", "1.0", "--end", "1.3", "--save", "video,coco"]
    result = run_cli(["video", PETS, "--out", tmp_path, *args, *lite])
    assert result.exit_code == 0, result.output
    images = json.loads((tmp_path / "vtest_pets2009_people_15s.images.json").read_text())
    assert [im["timestamp"] for im in images] == [1.0, 1.1, 1.2]
    assert read_facts(tmp_path / "vtest_pets2009_people_15s.mp4").frames == 3


@needs_videos
def test_summary_counts_frames(pets_run):
    _, summary = pets_run
    assert (summary["unit"], summary["total"], summary["processed"]) == ("frames", 3, 3)
    assert summary["detections"] == 15  # --max-det 5 and --score-thr 0: 5 per frame


# --- same results as images ---------------------------------------------------------


@pytest.mark.slow
@needs_videos
def test_frames_and_results_equal_segment_on_the_same_frames_as_png(
    run_cli, lite, tmp_path, pets_run
):
    png_dir = tmp_path / "frames"
    png_dir.mkdir()
    with av.open(str(PETS)) as container:  # plain PyAV decoding, as any user would do it
        for i, frame in zip(range(3), container.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24")
            cv2.imwrite(str(png_dir / f"{i:06d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    ours = list(decode_frames(PETS, FrameWindow(max_frames=3), DecodeReport()))
    assert len(ours) == 3
    for frame in ours:
        png = cv2.imread(str(png_dir / f"{frame.index:06d}.png"))
        assert np.array_equal(frame.image, cv2.cvtColor(png, cv2.COLOR_BGR2RGB))

    # Same batches as the video run (--batch-size 2 is the default of both commands).
    seg = run_cli(["segment", png_dir, "--out", tmp_path / "seg", "--save", "coco", *lite])
    assert seg.exit_code == 0, seg.output

    seg_results = json.loads((tmp_path / "seg" / "predictions.json").read_text())
    vid_results = json.loads(
        (pets_run[0] / "vtest_pets2009_people_15s.predictions.json").read_text()
    )
    assert len(vid_results) == len(seg_results) == 15
    for s, v in zip(seg_results, vid_results):
        assert (v["image_id"], v["category_id"]) == (s["image_id"], s["category_id"])
        assert v["score"] == pytest.approx(s["score"], abs=1e-4)
        assert v["bbox"] == pytest.approx(s["bbox"], abs=1e-4)
        assert v["segmentation"] == s["segmentation"]


@needs_videos
def test_masks_are_one_instance_id_png_per_frame(pets_run):
    out, _ = pets_run
    folder = out / "masks" / "vtest_pets2009_people_15s"
    names = ["000000.png", "000001.png", "000002.png"]
    assert sorted(p.name for p in folder.iterdir()) == names
    results = by_image(json.loads((out / "vtest_pets2009_people_15s.predictions.json").read_text()))
    for index, name in enumerate(names):
        ids = read_id_map(folder / name)
        assert ids.shape == (360, 480)
        assert 0 < ids.max() <= len(results[index + 1])


def test_without_libx264_the_mpeg4_fallback_is_used(monkeypatch):
    monkeypatch.setattr(video.encoder, "DEFAULT_CODECS", ("no_such_encoder", "mpeg4"))
    assert video.pick_encoder() == "mpeg4"


@pytest.mark.slow
def test_the_mpeg4_fallback_writes_a_playable_mp4_even_at_odd_sizes(run_cli, lite, tmp_path):
    clip = tmp_path / "odd.mp4"
    with av.open(str(clip), "w") as out:  # 4:2:0 H.264 cannot be odd-sized; 4:4:4 can
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 63, 47, "yuv444p"
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((47, 63, 3), 60 * i, np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    result = run_cli(["video", clip, "--out", tmp_path / "out", "--codec", "mpeg4", *lite])
    assert result.exit_code == 0, result.output
    facts = read_facts(tmp_path / "out" / "odd.mp4")
    assert (facts.codec, facts.frames, facts.width, facts.height) == ("mpeg4", 2, 63, 47)


# --- audio and rotation -----------------------------------------------------------------


@pytest.mark.slow
def test_an_aac_audio_track_is_copied_packet_for_packet(run_cli, lite, tmp_path):
    clip = make_clip(tmp_path / "talk.mp4", frames=2, audio="aac")
    result = run_cli(["video", clip, "--out", tmp_path / "out", *lite])
    assert result.exit_code == 0, result.output

    def audio_payloads(path: Path) -> list[bytes]:
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(audio=0) if p.size]

    output = tmp_path / "out" / "talk.mp4"
    assert read_facts(output).audio_codec == "aac"
    assert audio_payloads(output) == audio_payloads(clip)


@pytest.mark.slow
def test_audio_mp4_cannot_hold_is_reencoded_to_aac(run_cli, lite, tmp_path):
    clip = make_clip(tmp_path / "raw.mkv", frames=2, audio="pcm_u8")
    result = run_cli(["video", clip, "--out", tmp_path / "out", *lite])
    assert result.exit_code == 0, result.output
    output = tmp_path / "out" / "raw.mp4"
    assert read_facts(output).audio_codec == "aac"
    with av.open(str(output)) as container:
        seconds = sum(f.samples for f in container.decode(audio=0)) / 16000
    assert seconds == pytest.approx(0.2, abs=0.07)


def test_display_rotation_is_applied_so_frames_are_upright(tmp_path):
    clip = make_clip(tmp_path / "phone.mp4", frames=1, rotation=90)  # 90 deg counterclockwise
    (frame,) = decode_frames(clip, FrameWindow(), DecodeReport())
    assert frame.image.shape == (64, 48, 3)
    assert frame.image[-2, 1].min() > 200  # the top-left marker is now bottom-left
    assert frame.image[1, 1].max() < 60


# --- bad input --------------------------------------------------------------------------


def failure_reasons(out: Path) -> dict[str, str]:
    lines = (out / "failures.jsonl").read_text().splitlines()
    return {Path(e["path"]).name: e["reason"] for e in map(json.loads, lines)}


@needs_videos
def test_a_truncated_file_keeps_the_frames_that_decode_and_reports_the_rest(
    run_cli, lite, tmp_path
):
    cut = tmp_path / "cut.mp4"
    data = PETS.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # frames up to about 5.9 s survive
    out = tmp_path / "out"
    result = run_cli(["video", cut, "--out", out, "--start", 5, "--stride", 3, *lite])
    assert result.exit_code == 1
    facts = read_facts(out / "cut.mp4")
    assert 5 <= facts.frames <= 10 and (facts.width, facts.height) == (480, 360)
    assert "could not be read" in failure_reasons(out)["cut.mp4"]
    assert leftovers(out) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file (0 bytes)"), (b"just some text\n" * 20, "not a readable video")],
    ids=["zero-bytes", "text"],
)
def test_a_file_that_is_no_video_fails_alone_and_leaves_no_output(
    run_cli, lite, tmp_path, content, reason
):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    good = make_clip(tmp_path / "good.mp4", frames=1)
    out = tmp_path / "out"
    result = run_cli(["video", bad, good, "--out", out, *lite])
    assert result.exit_code == 1
    assert failure_reasons(out)["bad.mp4"].startswith(reason)
    assert (out / "good.mp4").exists() and not (out / "bad.mp4").exists()
    assert leftovers(out) == []


def test_a_missing_file_is_reported_and_the_rest_is_done(run_cli, lite, tmp_path):
    good = make_clip(tmp_path / "good.mp4", frames=1)
    result = run_cli(["video", tmp_path / "nope.mp4", good, "--out", tmp_path / "out", *lite])
    assert result.exit_code == 1
    assert "no such file" in failure_reasons(tmp_path / "out")["nope.mp4"]
    assert (tmp_path / "out" / "good.mp4").exists()


def test_an_unwritable_output_folder_is_one_error_and_exit_2(run_cli, lite, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = run_cli(["video", make_clip(tmp_path / "c.mp4"), "--out", not_a_folder, *lite])
    assert result.exit_code == 2
    assert "cannot write to output folder" in result.output


# --- resume -------------------------------------------------------------------------------


def test_a_finished_video_is_skipped_and_redone_with_overwrite_or_new_settings(
    run_cli, lite, tmp_path
):
    clip = make_clip(tmp_path / "clip.mp4", frames=1)
    out = tmp_path / "out"
    run = [*lite, "--json"]
    assert json_summary(run_cli(["video", clip, "--out", out, *run]))["processed"] == 1
    stamp = os.stat(out / "clip.mp4").st_mtime_ns

    again = json_summary(run_cli(["video", clip, "--out", out, *run]))
    assert (again["processed"], again["skipped"]) == (0, 1)
    assert os.stat(out / "clip.mp4").st_mtime_ns == stamp

    forced = json_summary(run_cli(["video", clip, "--out", out, "--overwrite", *run]))
    assert forced["processed"] == 1
    changed = json_summary(run_cli(["video", clip, "--out", out, *run, "--max-det", 3]))
    assert (changed["processed"], changed["detections"]) == (1, 3)


# --- segment meets a video ------------------------------------------------------------------


def test_segment_processes_videos_found_in_a_folder(run_cli, lite, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_clip(folder / "clip.mp4", frames=2)
    cv2.imwrite(str(folder / "photo.png"), np.full((48, 64, 3), 90, np.uint8))
    out = tmp_path / "out"
    result = run_cli(["segment", folder, "--out", out, "--json", *lite])
    assert json_summary(result)["processed"] == 2  # the photo and the video
    assert (out / "overlays" / "photo.jpg").exists()
    assert read_facts(out / "clip.mp4").frames == 2


# --- the model side: stride, batches, bounded hold -------------------------------------------


class FakeSegmenter:
    """Stands in for the network: each frame's "detection" scores the frame's number;
    `calls` records which frames each forward pass saw."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def predict(self, images, batch_size=None):
        self.calls.append([int(im[0, 0, 0]) for im in images])
        names, ids = ("__background__", "thing"), (0, 1)
        return [Detections([[0, 0, 1, 1]], [im[0, 0, 0]], [1], None, names, ids) for im in images]


@pytest.fixture
def fake_model() -> FakeSegmenter:
    return FakeSegmenter()


def numbered_frames(n: int, produced: list[int]):
    for i in range(n):
        produced.append(i)
        yield Frame(i, i / 10, np.full((2, 2, 3), i, np.uint8))


def test_stride_batches_keyed_frames_and_the_rest_reuse_the_last_result(fake_model):
    emitted = [
        (frame.index, int(dets.scores[0]))
        for frame, dets in predict_frames(numbered_frames(10, []), fake_model, 2, 3)
    ]
    assert fake_model.calls == [[0, 3], [6, 9]]
    assert emitted == [(i, i - i % 3) for i in range(10)]


def test_a_long_stride_cuts_batches_short_instead_of_holding_many_frames(fake_model):
    produced: list[int] = []
    ahead = [
        len(produced) - 1 - frame.index  # frames read but not yet passed on
        for frame, _ in predict_frames(
            numbered_frames(30, produced), fake_model, 4, 10, max_held=12
        )
    ]
    assert max(ahead) < 12
    assert fake_model.calls == [[0, 10], [20]]  # 2 keyed frames, not 4: 12 frames were held
