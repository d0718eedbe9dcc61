"""Hostile use of whole runs: changed inputs, a full disk, closed pipes, bad options.

Each test holds one rule of the README's Reliability section. The runs use the bundled
demo model on the bundled example images, so none of them needs the shared data; the
pipe and full-disk cases run `mrcnn` as a real process (a traceback cannot hide there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from helpers import EXAMPLES, invoke_cli, json_summary

EXAMPLE_IMAGES = sorted((EXAMPLES / "images").glob("*.png"))
MRCNN = [str(Path(sys.executable).parent / "mrcnn")]  # the installed command


def demo_run(out: Path, *inputs: Path | str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["segment", *map(str, inputs), "--model", "demo", "--out", str(out), *extra]


@pytest.fixture
def two_images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for src in EXAMPLE_IMAGES[:2]:
        shutil.copy(src, folder / src.name)
    return folder


def images_json(out: Path) -> dict[str, dict]:
    return {im["file_name"]: im for im in json.loads((out / "images.json").read_text())}


# --- 1. a changed input is redone -----------------------------------------------------


def test_an_input_replaced_by_another_size_is_redone(tmp_path, two_images):
    out = tmp_path / "out"
    assert invoke_cli(demo_run(out, two_images, extra=("--json",))).exit_code == 0
    target = two_images / EXAMPLE_IMAGES[0].name
    bigger = cv2.resize(cv2.imread(str(target)), None, fx=2, fy=1.5)
    cv2.imwrite(str(target), bigger)
    result = invoke_cli(demo_run(out, two_images, extra=("--json",)))
    summary = json_summary(result)
    assert (summary["processed"], summary["skipped"]) == (1, 1)
    entry = images_json(out)[target.name]
    assert (entry["height"], entry["width"]) == bigger.shape[:2]


def test_an_input_rewritten_with_other_pixels_of_the_same_size_is_redone(tmp_path, two_images):
    out = tmp_path / "out"
    invoke_cli(demo_run(out, two_images))
    target = two_images / EXAMPLE_IMAGES[0].name
    cv2.imwrite(str(target), cv2.imread(str(target))[::-1].copy())  # same size, upside down
    summary = json_summary(invoke_cli(demo_run(out, two_images, extra=("--json",))))
    assert (summary["processed"], summary["skipped"]) == (1, 1)
    clean = tmp_path / "clean"
    invoke_cli(demo_run(clean, two_images))
    assert (out / "predictions.json").read_bytes() == (clean / "predictions.json").read_bytes()


def test_an_untouched_input_is_still_skipped(tmp_path, two_images):
    out = tmp_path / "out"
    invoke_cli(demo_run(out, two_images))
    summary = json_summary(invoke_cli(demo_run(out, two_images, extra=("--json",))))
    assert (summary["processed"], summary["skipped"]) == (0, 2)


# --- 2. no traceback from a full disk -------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill `disk` until about `leave_bytes` are free; the filler file is returned."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(0, free - leave_bytes))
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("leave_kib", [8, 40, 64])
def test_a_full_disk_gives_one_line_per_problem_exit_1_and_a_clean_resume(
    tmp_path, small_disk, leave_kib
):
    inputs = [tmp_path / "bad.png", *EXAMPLE_IMAGES]
    inputs[0].write_bytes(b"not an image")
    out = small_disk / "out"
    filler = fill(small_disk, leave_kib * 1024)
    run = subprocess.run([*MRCNN, *demo_run(out, *inputs, extra=("--quiet",))],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert lines and all(line.startswith("failed ") for line in lines), run.stderr
    assert any("bad.png: not a decodable image" in line for line in lines)

    filler.unlink()  # space freed: a rerun finishes and equals a clean run
    rerun = subprocess.run([*MRCNN, *demo_run(out, *inputs, extra=("--quiet",))],
                           capture_output=True, text=True)  # fmt: skip
    assert rerun.returncode == 1 and rerun.stderr.splitlines() == [
        "failed " + str(inputs[0]) + ": not a decodable image"
    ]
    clean = tmp_path / "clean"
    invoke_cli(demo_run(clean, *inputs))
    for name in ("predictions.json", "images.json", "failures.jsonl"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


# --- 3. a closed or broken pipe never stops the work ----------------------------------


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `command` in bash with the mrcnn of this interpreter first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = f'{command}; echo "rc=${{PIPESTATUS[0]}}"'
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True)  # fmt: skip


@pytest.fixture
def bad_and_good(tmp_path: Path) -> Path:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    shutil.copytree(EXAMPLES / "images", tmp_path / "good")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize(
    "redirect",
    [
        "2>&1 >/dev/null | true",  # stderr into a pipe nobody reads
        "2>&1 >/dev/null | head -c 1 >/dev/null",  # read one byte, then closed
        "2>&-",  # stderr closed before the start
        "--json 2>/dev/null | true",  # stdout into a pipe nobody reads
        ">&- 2>&-",  # both closed
    ],
)
def test_a_closed_pipe_never_stops_the_work(bad_and_good, redirect):
    done = shell(f"mrcnn segment bad.png good --model demo --out out {redirect}", bad_and_good)
    assert done.stdout.strip().splitlines()[-1] == "rc=1", done.stdout + done.stderr
    out = bad_and_good / "out"
    assert len(json.loads((out / "images.json").read_text())) == len(EXAMPLE_IMAGES)
    assert len(list((out / "overlays").rglob("*.jpg"))) == len(EXAMPLE_IMAGES)
    assert (out / "failures.jsonl").read_text().count("\n") == 1


# --- 4. usage errors are one line, Typer's own range checks included -------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["segment", "x", "--batch-size", "0"], "--batch-size"),
        (["segment", "x", "--tile-overlap", "1"], "--tile-overlap"),
        (["segment", "x", "--score-thr", "2"], "--score-thr"),
        (["segment", "x", "--max-det", "0"], "--max-det"),
        (["segment", "x", "--workers", "0"], "--workers"),
        (["segment", "x", "--tile", "8"], "--tile"),
        (["segment", "x", "--max-det", "many"], "--max-det"),
        (["segment", "x", "--no-such-option"], "--no-such-option"),
        (["segment"], "Missing argument"),
        (["segmnt"], "segmnt"),
        (["video", "x", "--stride", "0"], "--stride"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args, says):
    done = subprocess.run([*MRCNN, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "60"})  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: mrcnn") and says in line
    assert not set(line) & set("│╭╰─"), "no box"


# --- 5. --quiet silences progress, not errors -----------------------------------------


def test_quiet_still_prints_each_failure_on_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = invoke_cli(demo_run(tmp_path / "out", bad, EXAMPLE_IMAGES[0], extra=("--quiet",)))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"failed {bad}: not a decodable image"]


def test_quiet_prints_nothing_when_all_went_well(tmp_path):
    result = invoke_cli(demo_run(tmp_path / "out", EXAMPLE_IMAGES[0], extra=("--quiet",)))
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
