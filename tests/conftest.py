"""Shared fixtures: the real data beside the repo, a tiny checkpoint, offline weights, the CLI.

Plain helpers and constants live in helpers.py (import them from there, not from here).

The real data (50 COCO val2017 images with their annotations) lives in the shared folder
next to the repository and is referenced in place, never copied into the repo.

Backend: the suite runs on torch (`MRCNN_BACKEND=torch`, set below before any test), the
exact path, because converting an R50 for OpenVINO costs ~15-20 s per new set of weights
and most tests are about something else. tests/test_openvino_backend.py asks for
OpenVINO explicitly. Converted models go to a temp folder ($MRCNN_CACHE_DIR), never to
the user's ~/.cache.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import (
    COCO_ANN,
    COCO_IMAGES,
    SHARED_DATA_MISSING,
    TINY_CATEGORY_IDS,
    TINY_CLASSES,
    TINY_SIZE,
    has_coco,
    invoke_cli,
)
from typer.testing import Result

os.environ["MRCNN_BACKEND"] = "torch"
os.environ["MRCNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="mrcnn-test-cache-")
atexit.register(shutil.rmtree, os.environ["MRCNN_CACHE_DIR"], True)  # ~200 MB after the R50 test


@pytest.fixture(scope="session")
def coco_images() -> Path:
    if not has_coco:
        pytest.skip(SHARED_DATA_MISSING)
    return COCO_IMAGES


@pytest.fixture(scope="session")
def coco_ann() -> Path:
    if not has_coco:
        pytest.skip(SHARED_DATA_MISSING)
    return COCO_ANN


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained compact model (3 shape classes, 128 px) in our checkpoint format.

    It runs in a fraction of a second per image on a CPU, so every CLI behaviour that
    does not depend on the COCO architectures is tested with it.
    """
    from mrcnn_cli.models.architectures import get_architecture
    from mrcnn_cli.models.checkpoint import ModelMeta, save_checkpoint

    torch.manual_seed(0)
    model = get_architecture("maskrcnn_resnet18_fpn_lite").build(
        len(TINY_CLASSES), min_size=TINY_SIZE, max_size=TINY_SIZE
    )
    meta = ModelMeta(
        arch="maskrcnn_resnet18_fpn_lite",
        class_names=TINY_CLASSES,
        category_ids=TINY_CATEGORY_IDS,
        settings={"min_size": TINY_SIZE, "max_size": TINY_SIZE},
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model.state_dict(), meta)
    return path


@dataclass(frozen=True)
class OfflineWeights:
    """Where weight resolution looks in a test: both folders empty, downloads off."""

    project_dir: Path
    hub_dir: Path


@pytest.fixture
def offline_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OfflineWeights:
    """No checkpoint anywhere: empty weights/ and hub cache, no $MRCNN_WEIGHTS, no download."""
    from mrcnn_cli.models import weights

    project_dir = tmp_path / "project_weights"
    project_dir.mkdir()
    monkeypatch.setattr(weights, "PROJECT_WEIGHTS_DIR", project_dir)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("MRCNN_NO_DOWNLOAD", "1")
    monkeypatch.delenv("MRCNN_WEIGHTS", raising=False)
    return OfflineWeights(project_dir, tmp_path / "torch_home" / "hub" / "checkpoints")


RunCli = Callable[[Sequence[str | Path]], Result]


@pytest.fixture
def run_cli() -> RunCli:
    """Invoke the `mrcnn` app in-process; stdout and stderr come back separately."""
    return invoke_cli
