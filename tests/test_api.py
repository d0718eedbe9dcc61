"""The Python API: `Segmenter`, `Detections`, `annotate` and whole jobs, as a user scripts them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLES, invoke_cli
from PIL import Image

import mrcnn_cli
from mrcnn_cli import Detections, SegmentationError, Segmenter, annotate, segment
from mrcnn_cli.decode import decode_image
from mrcnn_cli.segmenter import ImageError

PACKAGE = Path(mrcnn_cli.__file__).parent
EXAMPLE = EXAMPLES / "images" / "000001.png"


@pytest.fixture(scope="module")
def demo() -> Segmenter:
    return Segmenter(model="demo", device="cpu")


@pytest.fixture(scope="module")
def example_rgb() -> np.ndarray:
    return decode_image(EXAMPLE)


def test_segmenter_on_an_array_gives_what_segment_writes_for_that_image(
    demo, example_rgb, tmp_path
):
    result = invoke_cli(["segment", EXAMPLE, "--model", "demo", "--device", "cpu",
                         "--save", "coco", "-o", tmp_path, "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "predictions.json").read_text())
    image_id = json.loads((tmp_path / "images.json").read_text())[0]["id"]
    assert len(written) > 0
    assert demo(example_rgb).to_coco(image_id) == written


def test_a_path_a_pil_image_and_an_array_give_the_same_detections(demo, example_rgb):
    from_array = demo(example_rgb).to_coco(1)
    assert demo(EXAMPLE).to_coco(1) == from_array
    assert demo(str(EXAMPLE)).to_coco(1) == from_array
    assert demo(Image.fromarray(example_rgb)).to_coco(1) == from_array


def test_predict_returns_one_result_per_image_in_order(demo, example_rgb):
    flipped = np.ascontiguousarray(example_rgb[:, ::-1])
    results = demo.predict([example_rgb, flipped, example_rgb])
    assert [r.to_coco(1) for r in results] == [
        demo(example_rgb).to_coco(1),
        demo(flipped).to_coco(1),
        demo(example_rgb).to_coco(1),
    ]


def test_stream_yields_each_frame_as_its_batch_finishes(demo, example_rgb):
    frames = (example_rgb for _ in range(3))
    stream = demo.stream(frames, batch_size=2)
    first = next(stream)
    assert isinstance(first, Detections)
    assert len(list(stream)) == 2


def test_the_class_filter_keeps_only_the_named_classes(example_rgb):
    everything = Segmenter(model="demo", device="cpu", score_thr=0.05)(example_rgb)
    squares = Segmenter(model="demo", device="cpu", score_thr=0.05, classes=["square"])(example_rgb)
    assert {"square"} < set(everything.names), "the example must show several classes"
    assert set(squares.names) == {"square"}
    assert squares.to_coco(1) == everything[np.array(everything.names) == "square"].to_coco(1)


def test_the_mask_threshold_is_applied_by_the_segmenter(example_rgb):
    loose = Segmenter(model="demo", device="cpu", mask_thr=0.1)(example_rgb)
    tight = Segmenter(model="demo", device="cpu", mask_thr=0.9)(example_rgb)
    assert len(loose) == len(tight) > 0
    assert (loose.masks.areas() > tight.masks.areas()).all()
    loose_masks, tight_masks = np.asarray(loose.masks), np.asarray(tight.masks)
    assert (loose_masks | tight_masks).sum() == loose_masks.sum()  # tight is inside loose


def test_a_failing_batch_is_retried_image_by_image_so_only_the_bad_image_fails(
    demo, example_rgb, monkeypatch
):
    real_forward = demo._forward
    poison = np.zeros((7, 7, 3), np.uint8)

    def forward(images):
        if any(im.shape == poison.shape for im in images):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_forward(images)

    monkeypatch.setattr(demo, "_forward", forward)
    results = demo.predict_batch([example_rgb, poison, example_rgb])
    assert isinstance(results[1], ImageError) and "out of memory" in results[1].reason
    assert (
        results[0].to_coco(1) == results[2].to_coco(1) == real_forward([example_rgb])[0].to_coco(1)
    )
    with pytest.raises(SegmentationError, match="out of memory"):
        demo(poison)


def test_a_non_rgb_array_is_refused_with_its_shape(demo):
    with pytest.raises(ValueError, match=r"RGB uint8 HxWx3.*\(4, 4\)"):
        demo(np.zeros((4, 4), np.uint8))


def test_detections_come_back_from_their_coco_results(demo, example_rgb):
    dets = demo(example_rgb)
    h, w = example_rgb.shape[:2]
    back = Detections.from_coco(dets.to_coco(5), h, w, dets.class_names, dets.category_ids)
    np.testing.assert_array_equal(back.masks, dets.masks)
    np.testing.assert_array_equal(back.labels, dets.labels)
    np.testing.assert_allclose(back.boxes, dets.boxes, atol=0.01)
    np.testing.assert_allclose(back.scores, dets.scores, atol=1e-5)
    assert back.to_coco(5) == dets.to_coco(5)


def test_a_boolean_index_filters_every_field(demo, example_rgb):
    dets = demo(example_rgb)
    keep = dets.scores > float(np.median(dets.scores))
    kept = dets[keep]
    assert len(kept) == int(keep.sum())
    np.testing.assert_array_equal(kept.masks, dets.masks[keep])
    assert kept.names == [n for n, k in zip(dets.names, keep) if k]


def test_annotate_returns_a_new_image_and_leaves_the_input_alone(demo, example_rgb):
    before = example_rgb.copy()
    drawn = annotate(example_rgb, demo(example_rgb))
    np.testing.assert_array_equal(example_rgb, before)
    assert drawn.shape == example_rgb.shape and drawn.dtype == np.uint8
    assert (drawn != example_rgb).any()


def test_segment_runs_a_whole_job_silently_and_returns_its_summary(tmp_path, capfd, demo):
    summary = segment(EXAMPLES / "images", tmp_path, segmenter=demo, save="overlay,coco")
    assert summary.processed == 6 and not summary.failed
    assert (tmp_path / "predictions.json").is_file()
    assert len(list((tmp_path / "overlays").glob("*.jpg"))) == 6
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_segment_with_an_unknown_option_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        segment(EXAMPLES / "images", tmp_path, score_threshold=0.3)


def test_importing_the_package_and_the_console_script_does_not_import_torch():
    code = "import sys, mrcnn_cli, mrcnn_cli.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _imports_of(path: Path) -> set[str]:
    """Every mrcnn_cli module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            found.update(n for n in names if n.startswith("mrcnn_cli"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mrcnn_cli"))
    return found


def test_the_package_has_no_import_cycle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {
        name: {imp for imp in _imports_of(path) if imp in modules and imp != name}
        for name, path in modules.items()
        if name != "mrcnn_cli"  # its lazy exports import nothing at import time
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_engine_writers_and_sources_import_nothing_from_the_layers_above():
    """distributed/ (Ray, merge) and evaluation/ are built on the engine, the writers
    and the sources, never the other way round (shards and --ann image ids live below)."""
    below = [PACKAGE / name for name in ("engine.py", "sources.py", "remote.py", "shards.py",
                                         "decode.py", "journal.py", "runs.py")]  # fmt: skip
    below += list((PACKAGE / "writers").glob("*.py"))
    above = ("mrcnn_cli.distributed", "mrcnn_cli.evaluation", "mrcnn_cli.commands")
    for path in below:
        climbing = sorted(i for i in _imports_of(path) if i.startswith(above))
        assert not climbing, f"{path.name} imports {climbing}"


def test_the_library_never_imports_typer_or_rich():
    for path in PACKAGE.rglob("*.py"):
        if "commands" in path.parts or path.name == "cli.py":
            continue
        text = path.read_text()
        assert "import typer" not in text and "from rich" not in text, path


@pytest.mark.slow
def test_a_built_wheel_runs_the_demo_model_from_another_folder(tmp_path, example_rgb):
    root = PACKAGE.parent
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(root)], check=True, cwd=tmp_path)  # fmt: skip
    wheel = next(wheels.glob("mrcnn_cli-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(example_rgb).save(elsewhere / "x.png")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = [sys.executable, "-m", "mrcnn_cli", "segment", "x.png", "--model", "demo",
           "--device", "cpu", "--save", "coco", "-o", "out", "--quiet"]  # fmt: skip
    subprocess.run(run, cwd=elsewhere, env=env, check=True)
    code = (
        "import json, mrcnn_cli; from mrcnn_cli import Segmenter;"
        f"assert mrcnn_cli.__file__.startswith({str(site)!r}), mrcnn_cli.__file__;"
        "print(json.dumps(Segmenter(model='demo', device='cpu')('x.png').to_coco(1)))"
    )
    api = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    written = json.loads((elsewhere / "out" / "predictions.json").read_text())
    assert len(written) > 0 and json.loads(api.stdout) == written


@pytest.mark.slow
def test_the_api_example_script_runs(tmp_path):
    script = PACKAGE.parent / "examples" / "api.py"
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert "job: 6 processed" in out.stdout
    assert (tmp_path / "results_api" / "preview.jpg").is_file()
