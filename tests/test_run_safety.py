"""A run never loses data: the output lock, outputs never inputs, stale temp files, resume
checks, failures at any stage (write, end of run) and messages that stay literal."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import EXAMPLES, invoke_cli, json_summary

from mrcnn_cli.lock import OutputLock

IMAGES = EXAMPLES / "images"
DEMO = ["--model", "demo", "--device", "cpu"]


def segment(out: Path, *inputs: Path | str, extra: tuple[str, ...] = ()):
    return invoke_cli(["segment", *inputs, "-o", out, *DEMO, "--json", "--quiet", *extra])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("000000.png", "000001.png", "000002.png"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    return folder


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(photos, tmp_path):
    out = tmp_path / "out"
    with OutputLock(out):
        result = segment(out, photos)
    assert result.exit_code == 2
    assert "is in use by another mrcnn run (pid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "predictions.json").exists()


def test_the_lock_is_released_when_the_run_ends(photos, tmp_path):
    out = tmp_path / "out"
    assert segment(out, photos).exit_code == 0
    with OutputLock(out) as lock:
        assert lock.held


def test_an_output_folder_inside_the_input_folder_is_never_segmented(photos):
    out = photos / "results"
    for _ in range(3):
        result = segment(out, photos)
        assert result.exit_code == 0, result.output
    images = json.loads((out / "images.json").read_text())
    assert sorted(e["file_name"] for e in images) == ["000000.png", "000001.png", "000002.png"]
    assert json_summary(result)["total"] == 3


def test_temp_files_a_killed_run_left_are_removed_by_the_next(photos, tmp_path):
    out = tmp_path / "out"
    stale = out / "overlays" / ".000000.jpg.tmp~k1ll3d00.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a jpeg")
    assert segment(out, photos).exit_code == 0
    assert not stale.exists()
    assert not list(out.rglob("*.tmp~*"))


def test_resume_recreates_an_output_deleted_since_the_run(photos, tmp_path):
    out = tmp_path / "out"
    extra = ("--save", "overlay,masks,coco,labelme")
    assert segment(out, photos, extra=extra).exit_code == 0
    (out / "overlays" / "000001.jpg").unlink()
    (out / "labelme" / "000002.json").unlink()
    again = segment(out, photos, extra=extra)
    summary = json_summary(again)
    assert (summary["processed"], summary["skipped"]) == (2, 1)
    assert (out / "overlays" / "000001.jpg").is_file()
    assert (out / "labelme" / "000002.json").is_file()


def test_another_batch_size_redoes_the_images(photos, tmp_path):
    out = tmp_path / "out"
    assert segment(out, photos).exit_code == 0
    summary = json_summary(segment(out, photos, extra=("--batch-size", "2")))
    assert summary["processed"] == 3 and summary["skipped"] == 0


def test_an_error_while_writing_one_image_fails_that_image_alone(photos, tmp_path, monkeypatch):
    from mrcnn_cli import engine

    real = engine.write_overlay

    def flaky(path, image, dets, style=None):
        if "000001" in str(path):
            raise RuntimeError("encoder exploded")
        real(path, image, dets, style)

    monkeypatch.setattr(engine, "write_overlay", flaky)
    result = segment(tmp_path / "out", photos)
    summary = json_summary(result)
    assert result.exit_code == 1
    assert summary["processed"] == 2
    assert summary["failures"] == [
        {"path": str(photos / "000001.png"), "reason": "cannot write outputs: encoder exploded"}
    ]


def test_a_full_disk_at_the_end_is_one_failure_and_a_rerun_finishes_the_job(
    photos, tmp_path, monkeypatch
):
    from mrcnn_cli.journal import Journal

    out = tmp_path / "out"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "write_coco", disk_full)
        result = segment(out, photos)
    assert result.exit_code == 1
    failures = json_summary(result)["failures"]
    assert len(failures) == 1 and failures[0]["path"] == str(out / "predictions.json")
    assert "no space left on device" in failures[0]["reason"].lower()
    assert len(list((out / "overlays").glob("*.jpg"))) == 3
    rerun = segment(out, photos)
    assert rerun.exit_code == 0 and json_summary(rerun)["skipped"] == 3
    assert len(json.loads((out / "images.json").read_text())) == 3


@pytest.mark.parametrize("name", ["nope[/b].json", "nope[red].json"])
def test_a_file_name_with_markup_is_printed_literally(photos, tmp_path, name):
    result = segment(tmp_path / "out", photos, extra=("--ann", str(tmp_path / name)))
    assert result.exit_code == 2
    assert f"annotations file not found: {tmp_path / name}" in result.stderr


def test_an_ann_file_with_a_non_integer_image_id_is_one_line(photos, tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": "7", "file_name": "000000.png"}]}))
    result = segment(tmp_path / "out", photos, extra=("--ann", str(ann)))
    assert result.exit_code == 2 and "has no integer 'id'" in result.stderr


def test_an_eval_annotation_with_a_null_bbox_is_one_line(tmp_path):
    gt = json.loads((EXAMPLES / "instances.json").read_text())
    gt["annotations"][0]["bbox"] = None
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(gt))
    result = invoke_cli(["eval", "--ann", ann, "--pred", ann, "-o", tmp_path / "ev"])
    assert result.exit_code == 2
    assert "[x, y, width, height]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_file_name_that_is_not_utf8_is_processed_and_reported_readably(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = bytes(folder) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    bad = bytes(folder) + b"/br\xf6ken.png"
    with open(good, "wb") as f:
        f.write((IMAGES / "000000.png").read_bytes())
    with open(bad, "wb") as f:
        f.write(b"not a png")
    out = tmp_path / "out"
    result = segment(out, folder)
    assert result.exit_code == 1
    names = [e["file_name"] for e in json.loads((out / "images.json").read_text())]
    assert names == ["caf\\xe9.png"]
    lines = (out / "failures.jsonl").read_bytes().decode("utf-8").splitlines()
    assert len(lines) == 1 and "br\\xf6ken.png" in json.loads(lines[0])["path"]


def test_a_newline_in_a_name_keeps_its_failure_on_one_line(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "two\nlines.png").write_bytes(b"nope")
    result = segment(tmp_path / "out", folder)
    assert result.exit_code == 1
    lines = (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["path"].endswith("two\\nlines.png")  # a visible \n


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", ""], "--out is empty"),
        (["--device", "cpu:99"], "one CPU device"),
        (["--weights", "x.pth"], "--weights is for the torchvision architectures"),
    ],
)
def test_odd_option_values_are_refused_in_one_line(photos, tmp_path, args, message):
    result = invoke_cli(["segment", photos, *DEMO, "--quiet", "-o", tmp_path / "o", *args])
    assert result.exit_code == 2 and message in result.stderr


def test_a_text_file_given_as_model_is_not_a_checkpoint(photos, tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_text("hello")
    result = invoke_cli(["segment", photos, "-o", tmp_path / "o", "--model", fake])
    assert result.exit_code == 2
    assert "is not a PyTorch checkpoint" in result.stderr
    assert "weights_only" not in result.stderr


def test_an_image_the_model_cannot_take_fails_alone(tmp_path, photos):
    sliver = np.full((3, 900, 3), 200, np.uint8)  # 300:1, beyond any model's resize
    cv2.imwrite(str(photos / "sliver.png"), sliver)
    result = segment(tmp_path / "out", photos)
    summary = json_summary(result)
    assert result.exit_code == 1 and summary["processed"] == 3
    assert "image too narrow" in summary["failures"][0]["reason"]
