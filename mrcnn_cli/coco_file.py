"""Reading a COCO instances file: one JSON reader and one validator, every problem one line.

Low in the package on purpose: `segment --ann` (through `sources`), `train` and `eval`
all read annotation files with these, and none of them may import another's layer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrcnn_cli.errors import MrcnnError


def read_json(path: Path | str, what: str) -> Any:
    """The one JSON reader: every failure is one line that names the file and the reason."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MrcnnError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise MrcnnError(f"{what} path is a folder, not a JSON file: {path}") from None
    except OSError as exc:
        raise MrcnnError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MrcnnError(f"{what} {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise MrcnnError(f"{what} {path} is nested too deeply to read") from None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_coco_instances(
    path: Path | str, need: Sequence[str] = ("images", "annotations", "categories")
) -> dict[str, Any]:
    """The one validator of a COCO instances file: read it and check its structure.

    `need` names the top-level lists the caller uses (`segment --ann` needs only
    `images`). Checked: each is a list of objects; images have an integer `id` (and
    `width`/`height` when given); categories an integer `id`; annotations an integer
    `image_id` of a listed image, an integer `category_id`, and a `bbox` that is null-free
    [x, y, width, height] when present. Every problem is one line naming the entry.
    """
    path = Path(path)
    data = read_json(path, "annotations")
    if not isinstance(data, dict):
        raise MrcnnError(f"{path} is not a COCO annotation file (expected a JSON object)")
    for key in need:
        if not isinstance(data.get(key), list):
            raise MrcnnError(f"{path} is not a COCO annotation file: it has no {key!r} list")
    for i, entry in enumerate(data.get("images") or []):
        if not isinstance(entry, dict) or not is_int(entry.get("id")):
            raise MrcnnError(f"{path}: images entry #{i} has no integer 'id': {entry!r:.200}")
        for key in ("width", "height"):
            if key in entry and not is_int(entry[key]):
                raise MrcnnError(f"{path}: image {entry['id']} has a non-integer {key!r}")
    for i, entry in enumerate(data.get("categories") or []):
        if not isinstance(entry, dict) or not is_int(entry.get("id")):
            raise MrcnnError(f"{path}: categories entry #{i} has no integer 'id': {entry!r:.200}")
    image_ids = {entry["id"] for entry in data.get("images") or []}
    for i, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict):
            raise MrcnnError(f"{path}: annotation #{i} is not a JSON object")
        if not is_int(ann.get("image_id")) or not is_int(ann.get("category_id")):
            raise MrcnnError(
                f"{path}: annotation #{i} lacks an integer 'image_id' or 'category_id'"
            )
        if ann["image_id"] not in image_ids:
            raise MrcnnError(f"{path}: annotation #{i} is for image id {ann['image_id']}, "
                             "which is not in its 'images' list")  # fmt: skip
        bbox = ann.get("bbox", [0, 0, 0, 0])
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(is_number, bbox)):
            raise MrcnnError(
                f"{path}: annotation #{i} has a 'bbox' that is not four numbers "
                f"[x, y, width, height]: {bbox!r:.100}"
            )
    return data
