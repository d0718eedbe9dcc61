"""Helpers and constants shared by the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner, Result

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO_DIR = DATA / "coco_val_mini"
COCO_IMAGES = COCO_DIR / "images"
COCO_ANN = COCO_DIR / "instances.json"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TINY_CLASSES = ("__background__", "circle", "square", "triangle")
TINY_CATEGORY_IDS = (0, 1, 2, 3)
TINY_SIZE = 128


def invoke_cli(args: Sequence[str | Path]) -> Result:
    """Invoke the `mrcnn` app in-process; stdout and stderr come back separately."""
    from mrcnn_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def json_summary(result: Result) -> dict:
    """The summary a `--json` run printed on stdout."""
    return json.loads(result.stdout)
