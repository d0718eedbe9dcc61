"""`--save labelstudio`: Label Studio tasks with the masks as polygon predictions.

    labelstudio/tasks.json     a list of tasks, one per image (Import in a project)
    labelstudio/config.xml     the labeling config they match (Settings > Labeling Interface)

Each task's `data.image` is the `--image-prefix` followed by the image's relative
path (percent-encoded for web prefixes; default `/data/local-files/?d=`, Label
Studio's local files: set the prefix to where Label Studio can fetch the images, e.g.
`s3://bucket/photos/` or `https://host/photos/`). Its one prediction has
`model_version`, `score` (the mean of the detections' scores) and one `polygonlabels`
region per polygon, vertices in percent of `original_width`/`original_height` (pixel
centres / size * 100, as YOLO's are / size).

Holes and several parts: regions are polygons, because annotators edit polygons point
by point and Label Studio's brush RLE is its own codec no other tool reads. So, as in
the other polygon formats, holes are filled, and a mask in several parts is one region
per part, each with the instance's label and score (`meta.instance` numbers them, so
the parts of one instance can be told apart). An instance with no polygon (a one-pixel
or one-pixel-wide mask) has no region.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import quoteattr

from pycocotools import mask as mask_utils

from mrcnn_cli.atomic import atomic_path, write_text
from mrcnn_cli.journal import ImageRecord
from mrcnn_cli.writers.classes import real_labels
from mrcnn_cli.writers.polygons import mask_to_polygons

LABELSTUDIO_DIR = "labelstudio"
TASKS_FILE = "tasks.json"
CONFIG_FILE = "config.xml"
FROM_NAME = "label"  # the control tag's name in config.xml
TO_NAME = "image"  # the object tag's name, and the task's data key

# One colour per label, cycling (Label Studio's own default is one colour for all).
_COLOURS = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#469990", "#9a6324", "#800000", "#808000", "#000075", "#a9a9a9",
)  # fmt: skip


def labeling_config(class_names: Sequence[str]) -> str:
    """The labeling config: an Image and PolygonLabels with the model's real classes."""
    labels = [class_names[i] for i in real_labels(class_names)]
    lines = [
        "<View>",
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true" zoomControl="true"/>',
        f'  <PolygonLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2" '
        'pointSize="small" opacity="0.4">',
        *(
            f"    <Label value={quoteattr(name)} background="
            f"{quoteattr(_COLOURS[k % len(_COLOURS)])}/>"
            for k, name in enumerate(labels)
        ),
        "  </PolygonLabels>",
        "</View>",
    ]
    return "\n".join(lines) + "\n"


def image_url(prefix: str, rel: str) -> str:
    """`prefix` + the relative path, percent-encoded where the prefix is a web address
    (`/data/local-files/?d=`, `https://...`: a space or `#` would break the URL, and the
    server decodes it); kept as it is for storage URIs (`s3://`, `gs://`), which name keys.
    """
    if urlsplit(prefix).scheme in ("", "http", "https"):
        return prefix + quote(rel, safe="/")
    return prefix + rel


def task_for(
    record: ImageRecord,
    image_id: int,
    name_of: Mapping[int, str],
    image_prefix: str,
    model_version: str,
) -> dict[str, Any]:
    """One image's task: data.image, and its prediction (possibly with no regions)."""
    w, h = int(record.width), int(record.height)
    result, scores = [], []
    for k, entry in enumerate(record.results):
        rle = entry.get("segmentation")
        if not isinstance(rle, dict):
            continue
        mask = mask_utils.decode({"size": rle["size"], "counts": str(rle["counts"]).encode()})
        score = float(entry["score"])
        scores.append(score)
        for p, part in enumerate(mask_to_polygons(mask.astype(bool))):
            points = [[round(x * 100.0 / w, 4), round(y * 100.0 / h, 4)] for x, y in part.tolist()]
            result.append(
                {
                    "id": f"{image_id}_{k + 1}_{p + 1}",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": "polygonlabels",
                    "original_width": w,
                    "original_height": h,
                    "image_rotation": 0,
                    "value": {
                        "points": points,
                        "closed": True,
                        "polygonlabels": [name_of[int(entry["category_id"])]],
                    },
                    "score": score,
                    "meta": {"instance": k + 1},
                }
            )
    prediction: dict[str, Any] = {"model_version": model_version, "result": result}
    prediction["score"] = round(sum(scores) / len(scores), 5) if scores else 0.0
    return {
        "data": {TO_NAME: image_url(image_prefix, record.rel)},
        "meta": {"image_id": int(image_id), "file_name": record.rel},
        "predictions": [prediction],
    }


def write_labelstudio(
    tasks_path: Path,
    records: Callable[[], Iterable[ImageRecord]],
    image_ids: Mapping[str, int],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    image_prefix: str,
    model_version: str,
) -> int:
    """Stream tasks.json (one task per line) and write config.xml beside it; return the
    number of tasks."""
    name_of = {int(category_ids[i]): class_names[i] for i in real_labels(class_names)}
    write_text(Path(tasks_path).parent / CONFIG_FILE, labeling_config(class_names))
    count = 0
    with atomic_path(tasks_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for record in records():
            task = task_for(record, image_ids[record.rel], name_of, image_prefix, model_version)
            f.write(("\n" if count == 0 else ",\n") + json.dumps(task, ensure_ascii=False))
            count += 1
        f.write("\n]\n")
    return count
