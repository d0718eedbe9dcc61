"""Where the COCO weights of a torchvision architecture come from, in a fixed order.

1. --weights PATH   2. $MRCNN_WEIGHTS   3. the project's weights/ folder
4. the torch hub cache ($TORCH_HOME/hub/checkpoints)   5. torchvision's download.
When all fail, one message says which file, where to put it and where to fetch it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mrcnn_cli.errors import MrcnnError, WeightsNotFoundError
from mrcnn_cli.models.architectures import Architecture

PROJECT_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
NO_DOWNLOAD_ENV = "MRCNN_NO_DOWNLOAD"


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(arch: Architecture, explicit: str | None = None) -> Path:
    """Return a local checkpoint path for `arch`, downloading only as the last resort."""
    for source, value in (
        ("--weights", explicit),
        ("$MRCNN_WEIGHTS", os.environ.get("MRCNN_WEIGHTS")),
    ):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise MrcnnError(f"{source} file not found: {path}")
            return path
    file_name = arch.weights_file_name
    if file_name is None:
        raise MrcnnError(f"{arch.name} has no pretrained weights; pass --weights PATH")
    for folder in (PROJECT_WEIGHTS_DIR, hub_checkpoint_dir()):
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return _download(arch, file_name)


def _download(arch: Architecture, file_name: str) -> Path:
    url = arch.coco_weights.url
    reason = f"downloads are off (${NO_DOWNLOAD_ENV} is set)"
    if not os.environ.get(NO_DOWNLOAD_ENV):
        try:
            torch.hub.download_url_to_file(
                url, str(_ensure_dir(hub_checkpoint_dir()) / file_name), progress=True
            )
            return hub_checkpoint_dir() / file_name
        except Exception as exc:  # URLError, HTTPError, OSError, timeouts...
            text = str(exc).strip()
            reason = f"download failed: {text.splitlines()[0] if text else type(exc).__name__}"
    raise WeightsNotFoundError(
        f"no COCO weights for {arch.name}: {file_name} is not in {PROJECT_WEIGHTS_DIR} "
        f"or {hub_checkpoint_dir()}, and {reason}. On a connected machine fetch {url} and put it "
        f"in one of those folders, or pass --weights PATH (or set $MRCNN_WEIGHTS). "
        "To try the tool offline, use the bundled model: --model demo"
    )


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
