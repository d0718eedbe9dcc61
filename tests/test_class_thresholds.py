"""Per-class score thresholds: `--class-thr NAME=SCORE,...` and `Segmenter(class_thr=...)`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLES, invoke_cli, json_summary

from mrcnn_cli.config import ModelConfig, parse_class_thresholds
from mrcnn_cli.errors import MrcnnError

IMAGES = sorted((EXAMPLES / "images").glob("*.png"))


@pytest.fixture(scope="module")
def reference():
    """Every detection the demo model makes above 0.05 (no top-k), per image."""
    from mrcnn_cli import Segmenter

    seg = Segmenter("demo", score_thr=0.05, max_det=1000, backend="torch")
    return seg.predict(IMAGES)


def _expected(dets, thresholds: dict[int, float], default: float, max_det: int):
    cut = np.array([thresholds.get(int(lab), default) for lab in dets.labels])
    keep = np.flatnonzero(dets.scores > cut)[:max_det]
    return dets.labels[keep], dets.scores[keep]


@pytest.mark.parametrize(
    "class_thr,max_det",
    [({"square": 0.95, "circle": 0.1}, 100), ({"triangle": 0.2}, 2), ({"1": 0.99}, 100)],
)
def test_each_class_is_cut_at_its_own_threshold_before_the_top_k(reference, class_thr, max_det):
    from mrcnn_cli import Segmenter

    seg = Segmenter("demo", score_thr=0.5, class_thr=class_thr, max_det=max_det, backend="torch")
    label_of = {"circle": 1, "square": 2, "triangle": 3, "1": 1}
    thresholds = {label_of[k]: v for k, v in class_thr.items()}
    got = seg.predict(IMAGES)
    for ref, dets in zip(reference, got):
        labels, scores = _expected(ref, thresholds, 0.5, max_det)
        assert dets.labels.tolist() == labels.tolist()
        np.testing.assert_allclose(dets.scores, scores, rtol=1e-5)
    assert sum(len(d) for d in got) > 0


def test_an_unknown_class_in_class_thr_names_what_the_model_knows():
    from mrcnn_cli import Segmenter

    with pytest.raises(MrcnnError, match="--class-thr: unknown class 'dog'.*circle, square"):
        Segmenter("demo", class_thr={"dog": 0.3}, backend="torch")


@pytest.mark.parametrize(
    "value,message",
    [
        ("person", "expected NAME=SCORE"),
        ("person=high", "'high' is not a number"),
        ("person=1.5", "between 0 and 1"),
        ("person=0.5,person=0.6", "given twice"),
        ("=0.5", "expected NAME=SCORE"),
    ],
)
def test_a_bad_class_thr_value_is_a_one_line_usage_error(value, message, tmp_path: Path):
    with pytest.raises(MrcnnError, match=message):
        parse_class_thresholds(value)
    result = invoke_cli(["segment", EXAMPLES / "images", "-m", "demo", "--out", tmp_path,
                         "--class-thr", value, "--quiet"])  # fmt: skip
    assert result.exit_code == 2
    assert "--class-thr" in result.stderr and message.split("'")[0] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["video", "eval"])
def test_video_and_eval_take_class_thr_too(command, tmp_path: Path):
    args = [command, "-m", "demo", "--class-thr", "square=x", "--out", tmp_path]
    result = invoke_cli(args + (["x.mp4"] if command == "video" else ["--ann", "a.json"]))
    assert result.exit_code == 2
    assert "'--class-thr'" in result.stderr and "is not a number" in result.stderr


def test_an_unknown_class_on_the_command_line_exits_2_in_one_line(tmp_path: Path):
    result = invoke_cli(["segment", EXAMPLES / "images", "-m", "demo", "--out", tmp_path,
                         "--class-thr", "squar=0.3", "--quiet"])  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --class-thr: unknown class 'squar'; this model knows: circle, square, triangle"
    )


def test_class_thresholds_are_part_of_the_resume_settings(tmp_path: Path):
    base = ["segment", EXAMPLES / "images", "-m", "demo", "--out", tmp_path, "--save", "coco",
            "--json", "--quiet"]  # fmt: skip
    first = json_summary(invoke_cli([*base, "--class-thr", "square=0.9"]))
    assert first["processed"] == len(IMAGES)
    same = json_summary(invoke_cli([*base, "--class-thr", "square=0.9"]))
    assert same["skipped"] == len(IMAGES)
    other = json_summary(invoke_cli([*base, "--class-thr", "square=0.6"]))
    assert other["processed"] == len(IMAGES)


def test_without_class_thresholds_the_settings_are_those_of_earlier_versions():
    settings = ModelConfig("demo").output_settings()
    assert "class_thr" not in settings
    with_thr = ModelConfig("demo", class_thr=(("car", 0.3),)).output_settings()
    assert with_thr["class_thr"] == (("car", 0.3),)


def test_the_python_api_takes_class_thresholds_as_a_mapping(tmp_path: Path):
    from mrcnn_cli import segment

    summary = segment([EXAMPLES / "images"], tmp_path, model="demo", save="coco",
                      class_thr={"square": 0.999, "circle": 0.1})  # fmt: skip
    assert summary.processed == len(IMAGES)
    import json

    found = {e["category_id"] for e in json.loads((tmp_path / "predictions.json").read_text())}
    scores = [e["score"] for e in json.loads((tmp_path / "predictions.json").read_text())
              if e["category_id"] == 2]  # fmt: skip
    assert found and all(s > 0.999 for s in scores)
