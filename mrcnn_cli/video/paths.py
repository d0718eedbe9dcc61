"""Where one video's outputs go; names mirror the input tree like every writer's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mrcnn_cli.writers import output_path, safe_rel

VIDEO_SUFFIX = ".mp4"
PREDICTIONS_SUFFIX = ".predictions.json"
IMAGES_SUFFIX = ".images.json"
MOT_SUFFIX = ".mot.txt"
TRACKS_SUFFIX = ".tracks.csv"
_MASK_NAME = re.compile(r"^(\d{6,})\.png$")


@dataclass(frozen=True)
class VideoPaths:
    """Where one video's outputs go (names mirror the input tree like every writer's)."""

    video: Path
    predictions: Path
    images: Path
    masks: Path
    mot: Path
    tracks: Path

    @classmethod
    def for_item(cls, out: Path, rel: PurePosixPath) -> VideoPaths:
        rel = safe_rel(rel)
        return cls(
            video=Path(out, *rel.with_suffix(VIDEO_SUFFIX).parts),
            predictions=Path(out, *rel.with_suffix(PREDICTIONS_SUFFIX).parts),
            images=Path(out, *rel.with_suffix(IMAGES_SUFFIX).parts),
            masks=output_path(out, "masks", rel, ""),
            mot=Path(out, *rel.with_suffix(MOT_SUFFIX).parts),
            tracks=Path(out, *rel.with_suffix(TRACKS_SUFFIX).parts),
        )


def frame_mask_rel(rel: PurePosixPath, index: int) -> PurePosixPath:
    """`<rel stem>/<index:06d>.png`: `write_masks` puts it under `masks/`."""
    return safe_rel(rel).with_suffix("") / f"{index:06d}.png"


def remove_stale_masks(folder: Path, frames: int) -> None:
    """Drop frame PNGs an earlier, longer run left beyond this run's last frame."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _MASK_NAME.match(path.name)
        if match and int(match.group(1)) >= frames:
            path.unlink(missing_ok=True)
