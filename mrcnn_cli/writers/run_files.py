"""The files a run writes once, at its end, from every image's journal record.

predictions.json and images.json (COCO), objects.csv, cvat.xml and yolo/data.yaml hold
all images, so they are rebuilt from the records in input order: a resumed run writes
the same files as an uninterrupted one. A file that cannot be written (a full disk) is
reported as a failure of that file; the per-image outputs and records stay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn_cli.detections import Detections
from mrcnn_cli.distributed.shards import ShardSpec, shard_file_name
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.journal import ImageRecord, Journal
from mrcnn_cli.names import os_error_reason
from mrcnn_cli.writers.classes import real_class_names
from mrcnn_cli.writers.csv_table import object_rows, write_objects_csv
from mrcnn_cli.writers.cvat import cvat_fragment, write_cvat_xml
from mrcnn_cli.writers.yolo import write_yolo_data_yaml

PREDICTIONS_FILE = "predictions.json"
IMAGES_FILE = "images.json"
OBJECTS_FILE = "objects.csv"
CVAT_FILE = "cvat.xml"
NAMED_CLASS_KINDS = frozenset({"csv", "cvat", "yolo"})  # run files that list class names


def _records(
    journal: Journal, rels: Sequence[PurePosixPath | str], digest: str
) -> Iterator[ImageRecord]:
    for rel in rels:
        record = journal.load(rel)
        if record is not None and record.settings_hash == digest:
            yield record


def _detections(
    record: ImageRecord, class_names: tuple[str, ...], category_ids: tuple[int, ...]
) -> Detections:
    return Detections.from_coco(
        record.results, record.height, record.width, class_names, category_ids
    )


def write_run_files(
    out: Path,
    save: Sequence[str],
    journal: Journal,
    rels: Sequence[PurePosixPath | str],
    digest: str,
    image_ids: dict[str, int],
    class_names: tuple[str, ...],
    category_ids: tuple[int, ...],
    shard: ShardSpec | None = None,
) -> list[FailedItem]:
    """Write the run-level files `save` asks for; return those that could not be written.

    A shard's files carry its tag (`predictions.shard-0-of-4.json`): shards may share a
    folder, and `mrcnn merge` combines the COCO ones.
    """
    predictions = out / shard_file_name(PREDICTIONS_FILE, shard)
    objects = out / shard_file_name(OBJECTS_FILE, shard)
    cvat = out / shard_file_name(CVAT_FILE, shard)
    jobs: list[tuple[Path, Callable[[], Any]]] = []
    if "coco" in save:  # streamed from the journal, never all in memory
        images = out / shard_file_name(IMAGES_FILE, shard)
        jobs.append(
            (predictions, lambda: journal.write_coco(predictions, images, rels, digest, image_ids))
        )
    if "csv" in save:
        jobs.append(
            (
                objects,
                lambda: write_objects_csv(
                    objects,
                    (
                        row
                        for r in _records(journal, rels, digest)
                        for row in object_rows(
                            _detections(r, class_names, category_ids), r.rel, image_ids[r.rel]
                        )
                    ),
                ),
            )
        )
    if "cvat" in save:
        jobs.append(
            (
                cvat,
                lambda: write_cvat_xml(
                    cvat,
                    real_class_names(class_names),
                    [
                        cvat_fragment(
                            _detections(r, class_names, category_ids), r.rel, r.height, r.width
                        )
                        for r in _records(journal, rels, digest)
                    ],
                ),
            )
        )
    if "yolo" in save:
        jobs.append((out / "yolo" / "data.yaml", lambda: write_yolo_data_yaml(out, class_names)))
    failures = []
    for path, job in jobs:
        try:
            job()
        except OSError as exc:
            failures.append(FailedItem(path, f"cannot write: {os_error_reason(exc)}"))
    return failures
