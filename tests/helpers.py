"""Helpers and constants shared by the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from mrcnn_cli.detections import Detections

# The real data (50 COCO val2017 images and annotations, two short clips) lives beside the
# repository in ../shared/data, or wherever $MRCNN_TEST_DATA points; a clone without it
# skips the tests that need it (with the reason below) and runs the rest.
DATA = Path(
    os.environ.get("MRCNN_TEST_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
COCO_DIR = DATA / "coco_val_mini"
COCO_IMAGES = COCO_DIR / "images"
COCO_ANN = COCO_DIR / "instances.json"
VIDEOS = DATA / "video"
SHARED_DATA_MISSING = f"real test data not found at {DATA} (see README: Test data)"
has_coco = COCO_ANN.is_file() and COCO_IMAGES.is_dir()
has_videos = VIDEOS.is_dir()
needs_coco = pytest.mark.skipif(not has_coco, reason=SHARED_DATA_MISSING)
needs_videos = pytest.mark.skipif(not has_videos, reason=SHARED_DATA_MISSING)
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


def rect_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A bool [height, width] mask with the rectangle rows y0:y1, columns x0:x1 set."""
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def dets_from_masks(
    masks: list[np.ndarray],
    labels: list[int],
    class_names: tuple[str, ...],
    category_ids: tuple[int, ...],
    scores: list[float] | None = None,
    shape: tuple[int, int] = (1, 1),
) -> Detections:
    """Detections for hand-made masks (placeholder boxes; writers of polygons read masks)."""
    n = len(masks)
    stacked = np.stack(masks) if masks else np.zeros((0, *shape), bool)
    boxes = np.tile(np.array([0, 0, 1, 1], np.float32), (n, 1))
    return Detections(boxes, scores or [0.9] * n, labels, stacked, class_names, category_ids)


def tiny_scene_tree(root: Path) -> Path:
    """`root/src/images`: four generated 96x96 scenes the demo model segments, and one
    96x72 crop in a subfolder (a non-square size, a nested relative path)."""
    import cv2

    from mrcnn_cli.train.synthetic import write_dataset

    src = root / "src"
    write_dataset(src, num_images=4, seed=5, size=96)
    images = src / "images"
    (images / "sub").mkdir()
    image = cv2.imread(str(images / "000001.png"))
    cv2.imwrite(str(images / "sub" / "wide.png"), image[10:82, :])
    return images


# --- a real S3 server on 127.0.0.1 (moto's server mode) ------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(timeout: float = 30.0, auth_after: int | None = None) -> Iterator[str]:
    """Start `python -m moto.server` on a free port of 127.0.0.1, yield its endpoint URL,
    stop it at the end (killed if it does not stop in 10 s). Skips without moto.

    `auth_after`: requests after the first that many are checked against moto's IAM,
    where no key is known, so every later request is denied."""
    pytest.importorskip("moto.server", reason='needs moto[server] (pip install -e ".[dev,cloud]")')
    port = free_port()
    env = dict(os.environ)
    if auth_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_env(endpoint: str, home: Path) -> dict[str, str]:
    """Environment for the backends' usual credential chain to reach only the test server:
    dummy keys, the endpoint, and no user config files."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def tiny_shapes_image(seed: int) -> np.ndarray:
    """An 80 x 96 BGR picture with a few filled circles: the demo and tiny models find
    something in it at `--score-thr 0`, in a few milliseconds."""
    import cv2

    rng = np.random.default_rng(seed)
    image = np.full((80, 96, 3), 200, np.uint8)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(10, 70, 2))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(image, (x, y), int(rng.integers(5, 15)), color, -1)
    return image


def output_files(out: Path, skip: Sequence[str] = ()) -> dict[str, bytes]:
    """Every file a run left under `out` (temp files too), except the resume journal and
    the folders in `skip`."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not {".mrcnn", *skip} & set(p.relative_to(out).parts)
    }
