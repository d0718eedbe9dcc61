"""`mrcnn segment --engine ray`: the same files as the local engine, failures, resume,
a variable number of masks per image in one Ray batch, the output-folder probe.

One local Ray instance (num_cpus=2) serves the whole module; the engine joins it
instead of starting its own. The tiny seeded checkpoint at `--score-thr 0` gives
detections on every image.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from helpers import COCO_IMAGES, invoke_cli, json_summary, needs_coco

from mrcnn_cli.config import ModelConfig, SegmentConfig
from mrcnn_cli.errors import MrcnnError

IMAGES = [
    COCO_IMAGES / "000000000139.jpg",  # 426 x 640
    COCO_IMAGES / "000000000802.jpg",  # 640 x 424
    COCO_IMAGES / "000000011813.jpg",  # 500 x 333
    COCO_IMAGES / "000000018575.jpg",  # 480 x 640
]
SAVE = ["--save", "overlay,masks,coco"]


def segment_args(checkpoint: Path, out: Path, *inputs, extra=()) -> list:
    return ["segment", *inputs, "--model", checkpoint, "--device", "cpu", "--score-thr", "0",
            "--max-det", "10", "--out", out, "--json", *extra]  # fmt: skip


def output_files(out: Path) -> dict[str, bytes]:
    """Every file a run left under `out`, except the resume journal."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".mrcnn" not in p.relative_to(out).parts
    }


def test_engine_ray_without_ray_installed_says_how_to_install(
    tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = segment_args(tiny_checkpoint, tmp_path / "out", IMAGES[0], extra=["--engine", "ray"])
    result = invoke_cli(args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "needs Ray" in lines[0] and 'pip install "mrcnn[ray]"' in lines[0]


def test_ray_options_need_engine_ray(tiny_checkpoint, tmp_path):
    args = segment_args(tiny_checkpoint, tmp_path / "out", IMAGES[0], extra=["--num-workers", "2"])
    result = invoke_cli(args)
    assert result.exit_code == 2 and "--engine ray" in result.stderr


# --- with a local Ray ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "empty.jpg"
    path.write_bytes(b"")
    return path


@pytest.fixture
def one_torch_thread():
    """As in a Ray worker with one CPU (Ray sets OMP_NUM_THREADS=1): CPU kernels sum in
    another order with another thread count, which moves a few mask pixels."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_run(tiny_checkpoint, bad_file, tmp_path_factory) -> Path:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_torch_thread
    out = tmp_path_factory.mktemp("local") / "out"
    try:
        result = invoke_cli(segment_args(tiny_checkpoint, out, *IMAGES, bad_file, extra=SAVE))
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 1, result.output
    return out


@pytest.fixture(scope="module")
def ray_run(ray_local, tiny_checkpoint, bad_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "out"
    extra = [*SAVE, "--engine", "ray", "--num-workers", "2"]
    result = invoke_cli(segment_args(tiny_checkpoint, out, *IMAGES, bad_file, extra=extra))
    return out, result


@pytest.mark.slow
@needs_coco
def test_ray_writes_what_the_local_engine_writes(local_run, ray_run):
    out, result = ray_run
    assert result.exit_code == 1, result.output  # the bad file
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 10 * len(IMAGES)
    ray_files, local_files = output_files(out), output_files(local_run)
    assert sorted(ray_files) == sorted(local_files)
    masks = [name for name in ray_files if name.startswith("masks/")]
    assert len(masks) == len(IMAGES)
    for name in ray_files:  # predictions.json and images.json in the same order, PNGs
        assert ray_files[name] == local_files[name], name  # byte for byte, overlays too


@pytest.mark.slow
@needs_coco
def test_ray_reports_a_bad_file_like_the_local_engine(ray_run, bad_file):
    _, result = ray_run
    summary = json_summary(result)
    assert (summary["processed"], summary["failed"]) == (len(IMAGES), 1)
    assert summary["failures"] == [{"path": str(bad_file), "reason": "empty file (0 bytes)"}]
    failures = (ray_run[0] / "failures.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in failures] == [str(bad_file)]


@pytest.mark.slow
@needs_coco
def test_a_ray_rerun_resumes(ray_run, tiny_checkpoint, bad_file, tmp_path):
    out, _ = ray_run
    before = output_files(out)
    extra = [*SAVE, "--engine", "ray", "--num-workers", "1"]
    result = invoke_cli(segment_args(tiny_checkpoint, out, *IMAGES, bad_file, extra=extra))
    assert result.exit_code == 1, result.output
    summary = json_summary(result)
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (0, len(IMAGES), 1)
    assert output_files(out) == before


@pytest.mark.slow
@needs_coco
def test_images_with_zero_and_many_masks_share_a_ray_batch(
    ray_local, tiny_checkpoint, tmp_path, one_torch_thread
):
    """Batch size 2: the first batch holds an image with no detection and one with
    several, so their results differ in length inside one Ray batch; pixels go through
    decode tasks (the GPU path's layout) to the worker."""
    from mrcnn_cli.distributed.ray_engine import RayOptions, run_segment_ray
    from mrcnn_cli.engine import run_segment

    pair = IMAGES[:2]
    probe = tmp_path / "probe"
    assert invoke_cli(segment_args(tiny_checkpoint, probe, *pair, extra=SAVE)).exit_code == 0
    scores = json.loads((probe / "predictions.json").read_text())
    best = {i: max(p["score"] for p in scores if p["image_id"] == i) for i in (1, 2)}
    empty, full = sorted(best, key=best.get)
    threshold = (best[empty] + best[full]) / 2  # `empty` keeps nothing, `full` some

    model = ModelConfig(model=str(tiny_checkpoint), device="cpu", score_thr=threshold, max_det=10)
    outs = {}
    for engine in ("local", "ray"):
        cfg = SegmentConfig(inputs=tuple(map(str, pair)), out=tmp_path / engine, model=model,
                            batch_size=2, save=("overlay", "masks", "coco"))  # fmt: skip
        if engine == "local":
            summary = run_segment(cfg)
        else:
            options = RayOptions(num_workers=1, decode_in_tasks=True)
            summary = run_segment_ray(cfg, options)
        assert summary.processed == 2 and not summary.failed
        outs[engine] = output_files(tmp_path / engine)
    predictions = json.loads(outs["ray"]["predictions.json"])
    assert {p["image_id"] for p in predictions} == {full}
    assert outs["ray"] == outs["local"]


@pytest.mark.slow
def test_an_output_folder_a_worker_cannot_write_is_one_line(ray_local, tmp_path):
    from mrcnn_cli.distributed.ray_engine import check_out_from_workers

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(MrcnnError) as err:
        check_out_from_workers(ray_local, blocker / "out")
    message = str(err.value)
    assert "\n" not in message and "not writable from the Ray node" in message
    assert "storage every worker sees" in message
    check_out_from_workers(ray_local, tmp_path / "fine")  # and a good one passes
    assert not list((tmp_path / "fine" / ".mrcnn").iterdir())  # the probe cleans up


@pytest.mark.slow
@needs_coco
def test_a_model_that_cannot_load_on_the_workers_is_one_line(ray_local, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    args = segment_args(bogus, tmp_path / "out", IMAGES[0], extra=["--engine", "ray"])
    result = invoke_cli(args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
