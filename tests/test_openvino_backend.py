"""`--backend openvino`: the dense layers through OpenVINO, the rest torch; cached conversions.

What is checked: the backend choice (auto, explicit, fallback), the disk cache (a hit
does not convert, a corrupt entry is rebuilt), one compile for every image size, and
accuracy against torch: matched detections on a real COCO image with seeded random R50
weights, and the demo model's COCO AP on a held-out synthetic split.

Tolerances (stated, and measured when they were set; README "Backends"):
- R50 (random weights, one COCO image, 100 detections at score 0): at least 95% of
  torch's detections have an OpenVINO detection of the same class with box IoU >= 0.99,
  and those pairs have mean mask IoU >= 0.99.
- demo model, held-out split: bbox and segm AP within 0.003 of torch at fp32, 0.01 at bf16.

The suite runs on torch by default (conftest sets MRCNN_BACKEND=torch); these tests ask
for OpenVINO explicitly and give each cache test its own cache folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import COCO_IMAGES, EXAMPLES, invoke_cli, needs_coco

from mrcnn_cli import Segmenter
from mrcnn_cli.config import ModelConfig
from mrcnn_cli.decode import decode_image
from mrcnn_cli.models import backends, openvino_backend
from mrcnn_cli.models.openvino_cache import ENTRY_FILE, cache_root

pytest.importorskip("openvino")

IMAGE = COCO_IMAGES / "000000000139.jpg"  # 426 x 640
EXAMPLE = EXAMPLES / "images" / "000001.png"  # in the repository: no shared data needed


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache of this test's own."""
    monkeypatch.setenv("MRCNN_CACHE_DIR", str(tmp_path / "cache"))
    return cache_root()


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each conversion's target folder, in order (the real conversion still runs)."""
    calls: list[Path] = []
    real = openvino_backend._convert

    def counting(model, folder):
        calls.append(folder)
        return real(model, folder)

    monkeypatch.setattr(openvino_backend, "_convert", counting)
    return calls


def tiny(checkpoint: Path, **kwargs) -> Segmenter:
    return Segmenter(str(checkpoint), device="cpu", score_thr=0.0, **kwargs)


# --- choosing the backend ------------------------------------------------------------
def test_auto_runs_openvino_on_a_cpu(tiny_checkpoint, cache_dir):
    assert tiny(tiny_checkpoint, backend="auto").backend == "openvino"


def test_torch_backend_leaves_torchvisions_modules_in_place(tiny_checkpoint):
    seg = tiny(tiny_checkpoint, backend="torch")
    assert seg.backend == "torch"
    assert not isinstance(seg.loaded.model.backbone, openvino_backend.OVBackbone)


def test_the_default_backend_follows_the_environment(monkeypatch):
    monkeypatch.setenv("MRCNN_BACKEND", "openvino")
    assert ModelConfig().backend == "openvino"
    monkeypatch.delenv("MRCNN_BACKEND")
    assert ModelConfig().backend == "auto"


def test_openvino_on_cuda_is_refused_and_auto_picks_torch_there():
    import torch

    from mrcnn_cli.errors import MrcnnError

    cuda = torch.device("cuda")
    assert backends.requested_backend("auto", cuda, "fp32") == "torch"
    with pytest.raises(MrcnnError, match="runs on the CPU"):
        backends.requested_backend("openvino", cuda, "fp32")


def test_an_unknown_backend_is_a_usage_error(tiny_checkpoint, tmp_path):
    args = ["segment", EXAMPLE, "--out", tmp_path / "o", "--model", tiny_checkpoint]
    result = invoke_cli([*args, "--backend", "tvm"])
    assert result.exit_code == 2
    assert "--backend must be one of" in result.stderr


def test_auto_falls_back_to_torch_once_with_a_warning_when_openvino_does_not_import(
    tiny_checkpoint, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    monkeypatch.setattr(backends, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="mrcnn_cli"):
        first = tiny(tiny_checkpoint, backend="auto")
        second = tiny(tiny_checkpoint, backend="auto")
    assert (first.backend, second.backend) == ("torch", "torch")
    warnings = [r for r in caplog.records if "OpenVINO unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert len(first(rgb(100, 120))) >= 0  # it runs


def test_explicit_openvino_that_cannot_load_is_a_one_line_error(
    tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "openvino", None)
    out = tmp_path / "out"
    args = ["segment", EXAMPLE, "--out", out, "--model", tiny_checkpoint, "--backend", "openvino"]
    result = invoke_cli(args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend openvino: OpenVINO cannot load" in lines[0]


def test_the_backend_is_a_run_setting_so_switching_redoes_the_outputs(
    tiny_checkpoint, tmp_path, cache_dir
):
    out = tmp_path / "out"
    base = ["segment", EXAMPLE, "--out", out, "--model", tiny_checkpoint, "--json"]
    assert invoke_cli([*base, "--backend", "torch"]).exit_code == 0
    again = invoke_cli([*base, "--backend", "torch"])
    switched = invoke_cli([*base, "--backend", "openvino"])
    assert '"skipped": 1' in again.stdout
    assert '"processed": 1' in switched.stdout


# --- the cache -------------------------------------------------------------------------
def test_the_first_run_says_it_is_converting_and_the_second_does_not(
    tiny_checkpoint, tmp_path, cache_dir
):
    def run(name: str):
        args = ["segment", EXAMPLE, "--out", tmp_path / name, "--model", tiny_checkpoint]
        return invoke_cli([*args, "--backend", "openvino"])

    first, second = run("a"), run("b")
    assert first.exit_code == 0 and second.exit_code == 0
    assert "converting the model for OpenVINO" in first.stderr
    assert "converting" not in second.stderr


def test_a_cache_hit_does_not_convert_again(tiny_checkpoint, cache_dir, conversions):
    a = tiny(tiny_checkpoint, backend="openvino")
    b = tiny(tiny_checkpoint, backend="openvino")
    assert len(conversions) == 1
    assert [p.parent for p in conversions] == [cache_dir]
    image = rgb(128, 128)
    np.testing.assert_array_equal(a(image).boxes, b(image).boxes)


def test_other_weights_get_their_own_cache_entry(tiny_checkpoint, cache_dir, conversions):
    tiny(tiny_checkpoint, backend="openvino")
    Segmenter("demo", device="cpu", backend="openvino")
    assert len(conversions) == 2
    assert len({p.name for p in conversions}) == 2


@pytest.mark.parametrize("damage", ["truncate_weights", "garbage_entry_file", "missing_part"])
def test_a_corrupt_cache_entry_is_rebuilt_not_a_crash(
    tiny_checkpoint, cache_dir, conversions, damage
):
    image = rgb(128, 128, seed=1)
    before = tiny(tiny_checkpoint, backend="openvino")(image)
    (entry,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    if damage == "truncate_weights":
        weights = entry / "backbone.bin"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage_entry_file":
        (entry / ENTRY_FILE).write_text("{not json")
    else:
        (entry / "mask_head.xml").unlink()
    seg = tiny(tiny_checkpoint, backend="openvino")
    assert seg.backend == "openvino"
    assert len(conversions) == 2
    after = seg(image)
    np.testing.assert_array_equal(before.boxes, after.boxes)
    np.testing.assert_array_equal(before.masks, after.masks)


def test_a_killed_conversion_leaves_no_entry_under_the_key(tiny_checkpoint, cache_dir, monkeypatch):
    def dies(model, folder):
        (folder / "backbone.xml").write_text("<half")
        raise KeyboardInterrupt

    monkeypatch.setattr(openvino_backend, "_convert", dies)
    with pytest.raises(KeyboardInterrupt):
        tiny(tiny_checkpoint, backend="openvino")
    assert list(cache_dir.iterdir()) == []


def test_image_sizes_do_not_recompile(tiny_checkpoint, cache_dir):
    seg = tiny(tiny_checkpoint, backend="openvino")
    compiled = openvino_backend.compile_count
    for height, width in [(128, 128), (96, 200), (333, 77), (250, 250)]:
        dets = seg(rgb(height, width))
        assert dets.masks is not None and dets.masks.shape[1:] == (height, width)
    assert openvino_backend.compile_count == compiled


def test_tiles_run_through_openvino_too(tiny_checkpoint, cache_dir):
    seg = tiny(tiny_checkpoint, backend="openvino", tile=64, tile_overlap=0.25)
    assert seg.backend == "openvino"
    dets = seg(rgb(150, 170))
    assert dets.masks is not None and dets.masks.shape[1:] == (150, 170)


@pytest.mark.parametrize("command", ["segment", "video", "eval"])
def test_every_model_command_takes_the_backend_option(command):
    result = invoke_cli([command, "--help"])
    assert "--backend" in result.stdout


def test_the_box_head_runs_in_openvino_at_bf16_only(tiny_checkpoint, cache_dir):
    from mrcnn_cli.models.precision import cpu_has_fast_bf16

    fp32 = tiny(tiny_checkpoint, backend="openvino", precision="fp32")
    assert not isinstance(fp32.loaded.model.roi_heads.box_head, openvino_backend.OVBoxHead)
    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bfloat16")
    bf16 = tiny(tiny_checkpoint, backend="openvino", precision="bf16")
    assert isinstance(bf16.loaded.model.roi_heads.box_head, openvino_backend.OVBoxHead)
    image = rgb(128, 128, seed=3)
    assert len(bf16(image)) == len(fp32(image)) > 0


def test_the_compile_settings_follow_the_precision_and_torchs_threads():
    f32 = openvino_backend.compile_config("fp32", 2)
    bf16 = openvino_backend.compile_config("bf16", 3)
    assert f32["INFERENCE_PRECISION_HINT"] == "f32"  # else OpenVINO may pick bf16 itself
    assert bf16["INFERENCE_PRECISION_HINT"] == "bf16"
    assert (f32["INFERENCE_NUM_THREADS"], bf16["INFERENCE_NUM_THREADS"]) == (2, 3)


# --- accuracy against torch ---------------------------------------------------------------
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def match(reference, other, min_iou: float = 0.99) -> list[tuple[int, int]]:
    """Greedy pairs (i, j): same class, box IoU >= min_iou, each detection used once."""
    ious = box_iou(reference.boxes, other.boxes)
    ious[reference.labels[:, None] != other.labels[None, :]] = 0
    pairs, used = [], set()
    for i in np.argsort(-reference.scores):
        for j in np.argsort(-ious[i]):
            if ious[i, j] < min_iou:
                break
            if j not in used:
                used.add(j)
                pairs.append((int(i), int(j)))
                break
    return pairs


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.slow
@needs_coco
def test_r50_detections_match_torch_on_a_real_image():
    kw = dict(device="cpu", random_init_seed=7, score_thr=0.0, max_det=100)
    image = decode_image(IMAGE)
    torch_dets = Segmenter("maskrcnn_resnet50_fpn", backend="torch", **kw)(image)
    ov_dets = Segmenter("maskrcnn_resnet50_fpn", backend="openvino", **kw)(image)
    pairs = match(torch_dets, ov_dets)
    assert len(torch_dets) == 100
    assert len(pairs) >= 0.95 * len(torch_dets)
    ious = [mask_iou(torch_dets.masks[a], ov_dets.masks[b]) for a, b in pairs]
    assert np.mean(ious) >= 0.99
    i, j = np.array(pairs).T
    assert np.abs(torch_dets.scores[i] - ov_dets.scores[j]).max() < 1e-3


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """The demo model's held-out split (README: 300 images, seed 1, the val stream)."""
    from mrcnn_cli.train.synthetic import write_splits

    root = tmp_path_factory.mktemp("held_out")
    write_splits(root, train=0, val=300, seed=1)
    return root / "val"


def demo_ap(split: Path, out: Path, **options) -> dict[str, float]:
    from mrcnn_cli.api import evaluate
    from mrcnn_cli.config import EVAL_SCORE_THR

    outcome = evaluate(
        split / "instances.json", images=split / "images", out=out, model="demo",
        device="cpu", score_thr=EVAL_SCORE_THR, plots=False, gallery=0, **options,
    )  # fmt: skip
    return {t: r.metrics.ap for t, r in outcome.results.items()}


@pytest.fixture(scope="module")
def torch_ap(held_out, tmp_path_factory) -> dict[str, float]:
    return demo_ap(held_out, tmp_path_factory.mktemp("eval_torch"), backend="torch")


@pytest.mark.slow
@pytest.mark.parametrize("precision, tolerance", [("fp32", 0.003), ("bf16", 0.01)])
def test_demo_model_held_out_ap_is_within_tolerance_of_torch(
    held_out, torch_ap, tmp_path, precision, tolerance
):
    from mrcnn_cli.models.precision import cpu_has_fast_bf16

    if precision == "bf16" and not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bfloat16")
    ov_ap = demo_ap(held_out, tmp_path, backend="openvino", precision=precision)
    assert set(ov_ap) == {"bbox", "segm"}
    for kind, value in ov_ap.items():
        assert abs(value - torch_ap[kind]) <= tolerance, (kind, value, torch_ap[kind])
