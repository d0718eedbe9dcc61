"""COCO results files: predictions.json (entries from `Detections.to_coco`) and images.json.

The entries are exactly what `COCO.loadRes` reads, so `mrcnn eval` and any COCO tool can
score a run without conversion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn_cli.atomic import write_json
from mrcnn_cli.detections import image_entry as image_entry  # where images.json entries come from


def write_predictions(path: Path, results: list[dict[str, Any]]) -> None:
    """predictions.json: a plain COCO results list (compact; RLE makes it large)."""
    write_json(path, results)


def write_images_file(path: Path, images: list[dict[str, Any]]) -> None:
    """images.json: which image id is which file, with its size."""
    write_json(path, images, indent=1)


def image_id_for(ids: Mapping[str, int], rel: PurePosixPath | str) -> int | None:
    """The annotation id of an input: by its relative path, else by its file name."""
    rel = PurePosixPath(rel)
    found = ids.get(str(rel))
    return found if found is not None else ids.get(rel.name)


def assign_image_ids(
    rels: Iterable[PurePosixPath | str], known: Mapping[str, int] | None = None
) -> dict[str, int]:
    """rel -> image id for a whole run: annotation ids where known, else fresh ones.

    Fresh ids count up from above every known id in input order, so they never collide
    and are the same on every run over the same inputs (which resume relies on). Two
    inputs matching one annotation image (same file name in two folders): the first
    gets the id, the second a fresh one.
    """
    known = known or {}
    next_id = max(known.values(), default=0) + 1
    assigned: dict[str, int] = {}
    used: set[int] = set()
    for rel in rels:
        found = image_id_for(known, rel)
        if found is None or found in used:
            found, next_id = next_id, next_id + 1
        used.add(found)
        assigned[str(PurePosixPath(rel))] = found
    return assigned
