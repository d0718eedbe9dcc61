"""`mrcnn segment` from the command line: bad inputs, odd pixel formats, usage errors,
resume, missing weights, checkpoints given with --model, and what it prints.

Everything here runs a tiny seeded compact model from a checkpoint (conftest), at
`--score-thr 0` so there is always something to write; the COCO architectures' outputs
are checked against torchvision in test_segment_parity.py.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import COCO_IMAGES, invoke_cli, json_summary, needs_coco

import mrcnn_cli
from mrcnn_cli import engine
from mrcnn_cli.writers import overlay

IMAGE_A = COCO_IMAGES / "000000000139.jpg"  # 426 x 640
IMAGE_B = COCO_IMAGES / "000000000802.jpg"  # 640 x 424, portrait
# Mixed sizes and orientations, so batches are padded differently depending on mates.
RESUME_IMAGES = [
    IMAGE_A,
    IMAGE_B,
    COCO_IMAGES / "000000018575.jpg",
    COCO_IMAGES / "000000011813.jpg",
    COCO_IMAGES / "000000022192.jpg",
]
MAX_DET = "10"


def segment_args(checkpoint: Path, out: Path, *inputs, extra=()) -> list:
    return [
        "segment",
        *inputs,
        "--model",
        checkpoint,
        "--device",
        "cpu",
        "--score-thr",
        "0",
        "--max-det",
        MAX_DET,
        "--out",
        out,
        *extra,
    ]


def nonempty_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def output_files(out: Path) -> dict[str, bytes]:
    """Every file a run left under `out`, except the resume journal."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".mrcnn" not in p.relative_to(out).parts
    }


# --- entry points and what gets printed --------------------------------------------


def test_mrcnn_version_prints_the_version():
    script = Path(sys.executable).parent / "mrcnn"
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"mrcnn {mrcnn_cli.__version__}"


def test_python_m_mrcnn_cli_help_lists_the_commands():
    done = subprocess.run(
        [sys.executable, "-m", "mrcnn_cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "segment" in done.stdout and "train" in done.stdout and "eval" in done.stdout


@needs_coco
def test_json_prints_a_json_summary_on_stdout(run_cli, tiny_checkpoint, tmp_path):
    result = run_cli(segment_args(tiny_checkpoint, tmp_path / "out", IMAGE_A, extra=["--json"]))
    assert result.exit_code == 0, result.output
    summary = json_summary(result)
    assert summary["total"] == summary["processed"] == 1
    assert summary["failed"] == 0 and summary["failures"] == []
    assert summary["detections"] == int(MAX_DET)
    assert "mrcnn summary" not in result.stderr


@needs_coco
def test_quiet_prints_no_table_and_nothing_on_stdout(run_cli, tiny_checkpoint, tmp_path):
    result = run_cli(segment_args(tiny_checkpoint, tmp_path / "out", IMAGE_A, extra=["--quiet"]))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "mrcnn summary" not in result.stderr
    assert (tmp_path / "out" / "predictions.json").is_file()


def test_without_flags_the_summary_and_failures_tables_go_to_stderr(
    run_cli, tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # short relative names keep the table cells unwrapped
    result = run_cli(segment_args(tiny_checkpoint, Path("out"), IMAGE_A, "gone.jpg"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "mrcnn summary" in result.stderr
    table = result.stderr.split("mrcnn summary", 1)[1]
    assert "failures" in table and "gone.jpg" in table and "no such file" in table


# --- bad inputs --------------------------------------------------------------------

# name -> what its one-line reason must say
BAD_REASONS = {
    "missing.jpg": "no such file or directory",
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated or corrupt image data",
    "corrupt.png": "truncated or corrupt image data",
    "notes.jpg": "not a decodable image",
    "folder.jpg": "found in folder",
    "locked.jpg": "permission denied",
}


def corrupt_png(image_bgr: np.ndarray) -> bytes:
    """A well-formed PNG whose compressed pixel data is scrambled."""
    data = bytearray(cv2.imencode(".png", image_bgr)[1].tobytes())
    start = data.index(b"IDAT") + 20
    for i in range(start, start + 200):
        data[i] = (data[i] * 7 + 3) % 256
    return bytes(data)


@pytest.fixture(scope="module")
def bad_inputs_run(tmp_path_factory, tiny_checkpoint):
    """Two good images among every kind of bad one, all in one run."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "empty.jpg").write_bytes(b"")
    jpeg = IMAGE_A.read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "corrupt.png").write_bytes(corrupt_png(cv2.imread(str(IMAGE_A))[:64, :64]))
    (folder / "notes.jpg").write_text("shopping list: milk, eggs\n")
    (folder / "folder.jpg").mkdir()
    locked = folder / "locked.jpg"
    locked.write_bytes(jpeg)
    bad = [folder / name for name in BAD_REASONS]
    inputs = [IMAGE_A, *bad, COCO_IMAGES / "000000018575.jpg"]

    real_open = os.open

    def os_open(path, *args, **kwargs):  # tests run as root: chmod cannot lock
        if os.path.basename(path) == locked.name:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    out = folder / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", os_open)
        result = invoke_cli(segment_args(tiny_checkpoint, out, *inputs, extra=["--json"]))
    return result, out, bad


@pytest.mark.parametrize("name", list(BAD_REASONS))
@needs_coco
def test_each_bad_input_is_reported_on_one_line_with_its_reason(bad_inputs_run, name):
    result, _, _ = bad_inputs_run
    lines = [line for line in nonempty_lines(result.stderr) if name in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("failed ")
    assert BAD_REASONS[name] in lines[0]


@needs_coco
def test_good_images_are_processed_despite_the_bad_ones(bad_inputs_run):
    result, out, _ = bad_inputs_run
    summary = json_summary(result)
    assert summary["processed"] == 2
    assert summary["total"] == 2 + len(BAD_REASONS)
    names = {entry["file_name"] for entry in json.loads((out / "images.json").read_text())}
    assert names == {IMAGE_A.name, "000000018575.jpg"}
    assert (out / "overlays" / f"{IMAGE_A.stem}.jpg").is_file()


@needs_coco
def test_summary_lists_every_failure(bad_inputs_run):
    result, _, bad = bad_inputs_run
    failures = json_summary(result)["failures"]
    assert sorted(Path(f["path"]).name for f in failures) == sorted(BAD_REASONS)
    assert all(BAD_REASONS[Path(f["path"]).name] in f["reason"] for f in failures)


@needs_coco
def test_failures_jsonl_has_one_line_per_failure(bad_inputs_run):
    _, out, bad = bad_inputs_run
    lines = (out / "failures.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["path"] for r in records) == sorted(str(p) for p in bad)
    assert all(BAD_REASONS[Path(r["path"]).name] in r["reason"] for r in records)


@needs_coco
def test_some_failed_files_give_exit_code_1_without_a_traceback(bad_inputs_run):
    result, _, _ = bad_inputs_run
    assert result.exit_code == 1
    assert "Traceback" not in result.output


@needs_coco
def test_a_clean_rerun_removes_the_old_failures_file(run_cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert run_cli(segment_args(tiny_checkpoint, out, IMAGE_A, tmp_path / "no.jpg")).exit_code == 1
    assert (out / "failures.jsonl").is_file()
    assert run_cli(segment_args(tiny_checkpoint, out, IMAGE_A)).exit_code == 0
    assert not (out / "failures.jsonl").exists()


# --- pixel formats that must work --------------------------------------------------


def exif_rotated_jpeg(image_bgr: np.ndarray, orientation: int) -> bytes:
    """A JPEG with an APP1 Exif segment whose only tag is Orientation."""
    jpeg = cv2.imencode(".jpg", image_bgr)[1].tobytes()
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


# name -> (height, width) of the decoded image; the photo crop is 60 x 80
ODD_FORMATS = {
    "gray.png": (60, 80),
    "rgba.png": (60, 80),
    "deep16.png": (60, 80),
    "rotated.jpg": (80, 60),  # EXIF orientation 6: turned a quarter clockwise
}


@pytest.fixture(scope="module")
def odd_formats_run(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("odd_formats")
    photo = cv2.imread(str(IMAGE_A))[100:160, 200:280]
    cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0
    cv2.imwrite(str(folder / "rgba.png"), np.dstack([photo, alpha]))
    cv2.imwrite(str(folder / "deep16.png"), photo.astype(np.uint16) * 257)
    (folder / "rotated.jpg").write_bytes(exif_rotated_jpeg(photo, 6))
    out = folder / "out"
    args = segment_args(tiny_checkpoint, out, *(folder / n for n in ODD_FORMATS), extra=["--json"])
    args += ["--save", "overlay,masks,coco"]
    return invoke_cli(args), out


@needs_coco
def test_grayscale_rgba_16bit_and_exif_rotated_images_are_processed(odd_formats_run):
    result, _ = odd_formats_run
    assert result.exit_code == 0, result.output
    summary = json_summary(result)
    assert summary["processed"] == len(ODD_FORMATS) and summary["failed"] == 0


@pytest.mark.parametrize("name", list(ODD_FORMATS))
@needs_coco
def test_outputs_have_the_size_of_the_decoded_image(odd_formats_run, name):
    _, out = odd_formats_run
    height, width = ODD_FORMATS[name]
    stem = Path(name).stem
    assert cv2.imread(str(out / "overlays" / f"{stem}.jpg")).shape == (height, width, 3)
    id_map = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert id_map.shape == (height, width)
    entry = next(e for e in json.loads((out / "images.json").read_text()) if e["file_name"] == name)
    assert (entry["height"], entry["width"]) == (height, width)
    predictions = json.loads((out / "predictions.json").read_text())
    sizes = {tuple(p["segmentation"]["size"]) for p in predictions if p["image_id"] == entry["id"]}
    assert sizes == {(height, width)}


# --- usage and configuration errors ------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "maskrcnn_resnet101_fpn"], "no such model name or file"),
        (["--save", "overlay,bogus"], "--save takes a comma-separated subset"),
        (["--mask-format", "rle"], "--mask-format must be one of"),
        (["--classes", "circle,unicorn"], "unknown class 'unicorn'"),
        (["--half"], "fp16 (--half) needs a CUDA device"),
        (["--precision", "fp16"], "fp16 (--half) needs a CUDA device"),
        (["--precision", "fp8"], "--precision must be one of fp32, bf16, fp16"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--device", "tpu"], "use auto, cpu, cuda or cuda:N"),
        (["--roi-op", "warp"], "--roi-op must be one of"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(
    run_cli, tiny_checkpoint, tmp_path, monkeypatch, extra, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_cli(segment_args(tiny_checkpoint, tmp_path / "out", IMAGE_A, extra=extra))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = nonempty_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_an_unwritable_output_folder_is_a_usage_error(run_cli, tiny_checkpoint, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go")
    result = run_cli(segment_args(tiny_checkpoint, blocker / "out", IMAGE_A))
    assert result.exit_code == 2
    assert nonempty_lines(result.stderr)[0].startswith("error: cannot write to output folder")


# --- missing COCO weights ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "file_name"),
    [
        ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"),
        ("maskrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"),
    ],
)
def test_missing_coco_weights_exit_2_naming_file_folder_and_url(
    run_cli, offline_weights, tmp_path, model, file_name
):
    result = run_cli(["segment", IMAGE_A, "--model", model, "--device", "cpu", "-o", tmp_path])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = nonempty_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert file_name in line
    assert str(offline_weights.hub_dir) in line and str(offline_weights.project_dir) in line
    assert f"https://download.pytorch.org/models/{file_name}" in line
    assert "--weights" in line


# --- resume ------------------------------------------------------------------------

RESUME_EXTRA = ["--save", "overlay,masks,coco", "--batch-size", "2", "--json"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, tiny_checkpoint) -> Path:
    """One uninterrupted run: what every resumed or repeated run must reproduce."""
    out = tmp_path_factory.mktemp("clean") / "out"
    result = invoke_cli(segment_args(tiny_checkpoint, out, *RESUME_IMAGES, extra=RESUME_EXTRA))
    assert result.exit_code == 0, result.output
    assert json_summary(result)["processed"] == len(RESUME_IMAGES)
    return out


def copy_of(out: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(out, tmp_path / "out"))


@needs_coco
def test_interrupted_run_resumed_writes_what_an_uninterrupted_run_writes(
    run_cli, tiny_checkpoint, clean_run, tmp_path, monkeypatch
):
    """Ctrl-C arrives while the first batch is being written: one of its two images is
    done, the other is not, so the resumed run must re-form that batch to match."""
    real_write = engine.ImageWriter.__call__
    calls, lock = [], threading.Lock()

    def write_then_interrupt(self, decoded, dets):
        with lock:
            calls.append(decoded.item.rel)
            interrupt = len(calls) >= 2  # nothing is written after the interrupt
        if interrupt:
            raise KeyboardInterrupt
        return real_write(self, decoded, dets)

    out = tmp_path / "out"
    args = segment_args(tiny_checkpoint, out, *RESUME_IMAGES, extra=RESUME_EXTRA)
    with monkeypatch.context() as mp:
        mp.setattr(engine.ImageWriter, "__call__", write_then_interrupt)
        interrupted = run_cli(args)
    assert interrupted.exit_code == 130
    assert "interrupted" in interrupted.stderr
    assert not (out / "predictions.json").exists()

    resumed = run_cli(args)
    assert resumed.exit_code == 0, resumed.output
    summary = json_summary(resumed)
    assert (summary["skipped"], summary["processed"]) == (1, len(RESUME_IMAGES) - 1)
    assert output_files(out) == output_files(clean_run)


@needs_coco
def test_rerun_skips_images_already_done_and_rewrites_the_same_json(
    run_cli, tiny_checkpoint, clean_run, tmp_path
):
    out = copy_of(clean_run, tmp_path)
    (out / "predictions.json").unlink()
    result = run_cli(segment_args(tiny_checkpoint, out, *RESUME_IMAGES, extra=RESUME_EXTRA))
    assert result.exit_code == 0, result.output
    summary = json_summary(result)
    assert (summary["skipped"], summary["processed"]) == (len(RESUME_IMAGES), 0)
    assert output_files(out) == output_files(clean_run)


@needs_coco
def test_overwrite_redoes_every_image(run_cli, tiny_checkpoint, clean_run, tmp_path):
    out = copy_of(clean_run, tmp_path)
    extra = [*RESUME_EXTRA, "--overwrite"]
    result = run_cli(segment_args(tiny_checkpoint, out, *RESUME_IMAGES, extra=extra))
    assert result.exit_code == 0, result.output
    summary = json_summary(result)
    assert (summary["skipped"], summary["processed"]) == (0, len(RESUME_IMAGES))
    assert output_files(out) == output_files(clean_run)


@needs_coco
def test_changing_the_score_threshold_redoes_every_image(
    run_cli, tiny_checkpoint, clean_run, tmp_path
):
    before = json.loads((clean_run / "predictions.json").read_text())
    threshold = float(np.median([p["score"] for p in before]))
    out = copy_of(clean_run, tmp_path)
    args = segment_args(tiny_checkpoint, out, *RESUME_IMAGES, extra=RESUME_EXTRA)
    args[args.index("--score-thr") + 1] = f"{threshold:.5f}"
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    summary = json_summary(result)
    assert (summary["skipped"], summary["processed"]) == (0, len(RESUME_IMAGES))
    predictions = json.loads((out / "predictions.json").read_text())
    assert all(p["score"] >= threshold - 1e-5 for p in predictions)
    assert 0 < len(predictions) < len(before)


# --- a checkpoint given with --model -----------------------------------------------


@pytest.fixture
def drawn_labels(monkeypatch) -> list[str]:
    """The class names the overlay writer draws."""
    names: list[str] = []
    real = overlay.label_text

    def record(name: str, score: float, track_id: int = -1) -> str:
        names.append(name)
        return real(name, score, track_id)

    monkeypatch.setattr(overlay, "label_text", record)
    return names


@needs_coco
def test_a_checkpoints_class_names_reach_the_json_masks_and_overlay(
    run_cli, tiny_checkpoint, tmp_path, drawn_labels
):
    out = tmp_path / "out"
    extra = ["--save", "overlay,masks,coco", "--mask-format", "binary"]
    result = run_cli(segment_args(tiny_checkpoint, out, IMAGE_A, extra=extra))
    assert result.exit_code == 0, result.output
    predictions = json.loads((out / "predictions.json").read_text())
    names = {1: "circle", 2: "square", 3: "triangle"}
    expected = [names[p["category_id"]] for p in predictions]
    assert len(set(expected)) > 1
    mask_files = sorted(p.name for p in (out / "masks" / IMAGE_A.stem).iterdir())
    assert [f.split("_", 1)[1].removesuffix(".png") for f in mask_files] == expected
    assert sorted(drawn_labels) == sorted(expected)


@needs_coco
def test_classes_option_keeps_only_that_class(run_cli, tiny_checkpoint, tmp_path, drawn_labels):
    out = tmp_path / "out"
    extra = ["--classes", "circle", "--max-det", "30"]
    result = run_cli(segment_args(tiny_checkpoint, out, IMAGE_A, extra=extra))
    assert result.exit_code == 0, result.output
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} == {1}
    assert set(drawn_labels) == {"circle"}


@needs_coco
def test_classes_option_takes_category_ids_too(run_cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    extra = ["--classes", "3", "--max-det", "30"]
    result = run_cli(segment_args(tiny_checkpoint, out, IMAGE_A, extra=extra))
    assert result.exit_code == 0, result.output
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} == {3}
