"""`mrcnn train`: learning, checkpoints, exact resume, and clear errors for bad datasets."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import invoke_cli

from mrcnn_cli.errors import MrcnnError
from mrcnn_cli.models.checkpoint import load_checkpoint
from mrcnn_cli.models.loading import load_model
from mrcnn_cli.train.dataset import CocoInstanceDataset
from mrcnn_cli.train.loop import TrainConfig, train
from mrcnn_cli.train.synthetic import write_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, num_images=6, seed=11)
    return root


def _config(shapes: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(
        images=shapes / "images",
        ann=shapes / "instances.json",
        out=out,
        steps=6,
        batch_size=2,
        lr=0.01,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=1,
        seed=3,
        threads=2,
    )
    return replace(base, **kw)


@pytest.mark.slow
def test_short_training_lowers_the_loss(shapes, tmp_path):
    state = train(_config(shapes, tmp_path, steps=24, batch_size=2, lr=0.01, hflip=False))
    losses = [r["loss"] for r in state.history if "loss" in r]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4


@pytest.mark.slow
def test_training_writes_a_checkpoint_that_segment_can_load(shapes, tmp_path):
    train(_config(shapes, tmp_path, steps=2))
    loaded = load_model(str(tmp_path / "final.pt"), device="cpu")
    assert loaded.class_names == ("__background__", "circle", "square", "triangle")
    assert loaded.category_ids == (0, 1, 2, 3)
    assert loaded.meta.arch == "maskrcnn_resnet18_fpn_lite"
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "curves.png").is_file()


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_run(shapes, tmp_path):
    train(_config(shapes, tmp_path / "straight"))

    class Interrupt(Exception):
        pass

    def stop_at_5(step, _losses):
        if step == 5:  # after the step-3 checkpoint, before the step-6 one
            raise Interrupt

    cut = _config(shapes, tmp_path / "cut")
    with pytest.raises(Interrupt):
        train(cut, on_step=stop_at_5)
    assert load_checkpoint(tmp_path / "cut" / "last.pt").extra["step"] == 3
    state = train(replace(cut, resume=True))
    assert state.step == 6
    a = load_checkpoint(tmp_path / "straight" / "final.pt").state_dict
    b = load_checkpoint(tmp_path / "cut" / "final.pt").state_dict
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_a_previous_run_is_a_clear_error(shapes, tmp_path):
    with pytest.raises(MrcnnError, match="no .*last.pt"):
        train(_config(shapes, tmp_path, resume=True))


@pytest.mark.slow
def test_validation_keeps_the_best_checkpoint_with_its_metrics(shapes, tmp_path):
    cfg = _config(
        shapes,
        tmp_path,
        steps=2,
        val_images=shapes / "images",
        val_ann=shapes / "instances.json",
        eval_every=2,
    )
    train(cfg)
    best = load_checkpoint(tmp_path / "best.pt")
    assert set(best.extra["metrics"]) >= {"bbox_AP", "segm_AP", "segm_AP50", "segm_AP75"}
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert any("segm_AP" in row for row in history)


# ---------------------------------------------------------------------------- bad datasets
def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _dataset_dict(shapes: Path) -> dict:
    return json.loads((shapes / "instances.json").read_text())


def test_missing_image_files_are_listed(shapes, tmp_path):
    data = _dataset_dict(shapes)
    data["images"][0]["file_name"] = "not_there.png"
    with pytest.raises(MrcnnError, match="missing .*not_there.png"):
        CocoInstanceDataset(shapes / "images", _write(tmp_path, data))


def test_annotations_for_unknown_image_ids_are_an_error(shapes, tmp_path):
    data = _dataset_dict(shapes)
    data["annotations"][0]["image_id"] = 99999
    with pytest.raises(MrcnnError, match="image id.*99999"):
        CocoInstanceDataset(shapes / "images", _write(tmp_path, data))


def test_dataset_without_annotations_is_an_error(shapes, tmp_path):
    data = _dataset_dict(shapes)
    data["annotations"] = []
    with pytest.raises(MrcnnError, match="no annotations"):
        CocoInstanceDataset(shapes / "images", _write(tmp_path, data))


def test_degenerate_polygons_are_skipped_with_a_warning(shapes, tmp_path):
    data = _dataset_dict(shapes)
    first_image = data["images"][0]["id"]
    kept = [a for a in data["annotations"] if a["image_id"] == first_image]
    data["annotations"].append({**kept[0], "id": 10**6, "segmentation": [[1, 1, 2, 2]]})
    data["annotations"].append({**kept[0], "id": 10**6 + 1, "segmentation": []})
    ds = CocoInstanceDataset(shapes / "images", _write(tmp_path, data))
    with pytest.warns(UserWarning, match="degenerate"):
        _, target = ds.load(0)
    assert len(target["labels"]) == len(kept)


def test_crowd_annotations_are_not_training_targets(shapes, tmp_path):
    data = _dataset_dict(shapes)
    first_image = data["images"][0]["id"]
    n_before = sum(a["image_id"] == first_image for a in data["annotations"])
    for a in data["annotations"]:
        if a["image_id"] == first_image:
            a["iscrowd"] = 1
            break
    ds = CocoInstanceDataset(shapes / "images", _write(tmp_path, data))
    assert len(ds.load(0)[1]["labels"]) == n_before - 1


def test_not_a_coco_file_is_an_error(shapes, tmp_path):
    path = tmp_path / "ann.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(MrcnnError, match="not a COCO annotation file"):
        CocoInstanceDataset(shapes / "images", path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "cpu:3"], "one CPU device"),
        (["--val-images", "."], "--val-images and --val-ann go together"),
        (["--val-ann", "x.json"], "--val-images and --val-ann go together"),
    ],
)
def test_a_train_usage_error_is_one_line_and_exit_2(shapes, tmp_path, args, message):
    result = invoke_cli(["train", "--images", shapes / "images", "--ann",
                         shapes / "instances.json", "-o", tmp_path, "--quiet", *args])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "last.pt").exists()
