"""The files a run writes once, at its end, from every image's journal record.

predictions.json and images.json (COCO), objects.csv, cvat.xml, yolo/data.yaml, the COCO
instances dataset and Label Studio's tasks.json hold all images, so they are rebuilt
from the records in input order: a resumed run writes the same files as an
uninterrupted one. A file that cannot be written (a full disk) is reported as a failure
of that file; the per-image outputs and records stay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mrcnn_cli.config import ExportOptions
from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.journal import Journal
from mrcnn_cli.names import os_error_reason
from mrcnn_cli.shards import ShardSpec, shard_file_name
from mrcnn_cli.writers.classes import real_class_names
from mrcnn_cli.writers.coco_dataset import ANNOTATIONS_FILE, coco_dataset_file, write_coco_dataset
from mrcnn_cli.writers.csv_table import object_rows, write_objects_csv
from mrcnn_cli.writers.cvat import cvat_fragment, write_cvat_xml
from mrcnn_cli.writers.labelstudio import LABELSTUDIO_DIR, TASKS_FILE, write_labelstudio
from mrcnn_cli.writers.yolo import write_yolo_data_yaml

PREDICTIONS_FILE = "predictions.json"
IMAGES_FILE = "images.json"
OBJECTS_FILE = "objects.csv"
CVAT_FILE = "cvat.xml"
# run files that list class names
NAMED_CLASS_KINDS = frozenset({"csv", "cvat", "yolo", "coco-dataset", "labelstudio"})


class _TablePass:
    """One pass over the records for objects.csv and cvat.xml: each image's masks are
    decoded once even when both files are asked for (at 12 MP that is the cost)."""

    def __init__(
        self,
        journal: Journal,
        rels: Sequence[PurePosixPath | str],
        digest: str,
        image_ids: dict[str, int],
        class_names: tuple[str, ...],
        category_ids: tuple[int, ...],
        want_fragments: bool,
    ) -> None:
        self.journal, self.rels, self.digest, self.image_ids = journal, rels, digest, image_ids
        self.class_names, self.category_ids = class_names, category_ids
        self.want_fragments = want_fragments
        self.fragments: list[dict[str, Any]] = []
        self.complete = False  # the fragments hold every image

    def rows(self, want_rows: bool = True) -> Iterator[dict[str, Any]]:
        """The CSV rows in input order, collecting the CVAT fragments on the way."""
        self.fragments, self.complete = [], False
        for rel in self.rels:
            record = self.journal.load(rel)
            if record is None or record.settings_hash != self.digest:
                continue
            dets = Detections.from_coco(
                record.results, record.height, record.width, self.class_names, self.category_ids
            )
            if self.want_fragments:
                self.fragments.append(cvat_fragment(dets, record.rel, record.height, record.width))
            if want_rows:
                yield from object_rows(dets, record.rel, self.image_ids[record.rel])
        self.complete = True

    def all_fragments(self) -> list[dict[str, Any]]:
        """The CVAT fragments of every image (a pass of their own if the CSV made none)."""
        if not self.complete:
            for _ in self.rows(want_rows=False):
                pass
        return self.fragments


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
    export: ExportOptions | None = None,
    model_version: str = "mrcnn",
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
    tables = _TablePass(journal, rels, digest, image_ids, class_names, category_ids, "cvat" in save)
    if "csv" in save:
        jobs.append((objects, lambda: write_objects_csv(objects, tables.rows())))
    if "cvat" in save:
        labels = real_class_names(class_names)
        jobs.append((cvat, lambda: write_cvat_xml(cvat, labels, tables.all_fragments())))
    export = export or ExportOptions()
    if "yolo" in save:
        done = lambda: (r.rel for r in journal.records(rels, digest))  # noqa: E731
        jobs.append((out / "yolo" / "data.yaml", lambda: write_yolo_data_yaml(
            out, class_names, done(), export.val_split)))  # fmt: skip
    if "coco-dataset" in save:
        dataset = coco_dataset_file(out, shard_file_name(ANNOTATIONS_FILE, shard))
        records = lambda: journal.records(rels, digest)  # noqa: E731
        jobs.append((dataset, lambda: write_coco_dataset(
            dataset, records, image_ids, class_names, category_ids, export.polygons)))  # fmt: skip
    if "labelstudio" in save:
        tasks = out / LABELSTUDIO_DIR / shard_file_name(TASKS_FILE, shard)
        records = lambda: journal.records(rels, digest)  # noqa: E731
        jobs.append((tasks, lambda: write_labelstudio(tasks, records, image_ids, class_names,
                     category_ids, export.image_prefix, model_version)))  # fmt: skip
    failures = []
    for path, job in jobs:
        try:
            job()
        except OSError as exc:
            failures.append(FailedItem(path, f"cannot write: {os_error_reason(exc)}"))
    return failures
