"""The one inference loop behind `segment` (and `eval`'s model mode).

    sources -> decode (thread pool, bounded look-ahead) -> batches -> model
            -> postprocess -> writers (thread pool, bounded) -> journal

Decoding runs ahead of the model in worker threads (OpenCV releases the GIL), and
writing (JPEG/PNG encoding, RLE) runs behind it, so the network is never waiting on
files. Both queues are bounded: memory stays flat however many images there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mrcnn_cli.atomic import write_bytes
from mrcnn_cli.config import SegmentConfig
from mrcnn_cli.decode import decode_image_safe
from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.journal import FAILURES_FILE, Journal, close_with_failures, settings_hash
from mrcnn_cli.names import display_name, os_error_reason
from mrcnn_cli.progress import ProgressListener, RunSummary, Tally
from mrcnn_cli.runs import PreparedRun, model_fingerprint, prepared_run
from mrcnn_cli.segmenter import ImageError, Segmenter
from mrcnn_cli.shards import (
    ShardSpec,
    shard_file_name,
    shard_lock_name,
    write_manifest,
)
from mrcnn_cli.sources import SourceItem, image_ids_from_annotations, source_stamp
from mrcnn_cli.video.job import process_video, report_row
from mrcnn_cli.writers import output_path
from mrcnn_cli.writers.coco import assign_image_ids
from mrcnn_cli.writers.coco_dataset import coco_dataset_images_dir
from mrcnn_cli.writers.crops import crops_folder, write_crops
from mrcnn_cli.writers.image_links import dataset_image_path, place_image
from mrcnn_cli.writers.labelme import labelme_path, write_labelme
from mrcnn_cli.writers.masks import write_masks
from mrcnn_cli.writers.overlay import annotate, encode_jpeg, overlay_path, write_overlay
from mrcnn_cli.writers.report import REPORT_FILE, ReportRun, report_settings, write_run_report
from mrcnn_cli.writers.run_files import write_run_files
from mrcnn_cli.writers.thumbs import THUMBS_DIR, thumb_path, write_thumbnail
from mrcnn_cli.writers.yolo import write_yolo_labels, yolo_images_dir, yolo_label_path


def output_settings(cfg: SegmentConfig, batch_size: int) -> dict[str, Any]:
    """What decides an image's output bytes: options, model files, and the batch size
    (an image's numbers depend on its batch-mates' padding)."""
    return {
        **cfg.output_settings(),
        "model_files": model_fingerprint(cfg.model),
        "batch_size": batch_size,
    }


@dataclass
class Decoded:
    item: SourceItem
    image: np.ndarray
    stamp: str | None = None  # the source's size and mtime when it was read


def decode_item(item: SourceItem, max_pixels: int) -> Decoded | FailedItem:
    """Decode one input, stamped first (see `source_stamp`)."""
    stamp = source_stamp(item.path)
    result = decode_image_safe(item.path, max_pixels)
    return result if isinstance(result, FailedItem) else Decoded(item, result, stamp)


def decode_ahead(
    items: Sequence[SourceItem], workers: int, lookahead: int, max_pixels: int
) -> Iterator[tuple[SourceItem, Decoded | FailedItem]]:
    """Decode in a thread pool, yielding in input order, at most `lookahead` in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[SourceItem, Future]] = deque()
        queue = iter(items)
        for item in queue:
            pending.append((item, pool.submit(decode_item, item, max_pixels)))
            if len(pending) >= lookahead:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode_item, nxt, max_pixels)))
            yield item, fut.result()


def batch_groups(
    items: Sequence[SourceItem], todo: Sequence[SourceItem], batch_size: int
) -> list[list[SourceItem]]:
    """The batches to run: cut from the whole input list, kept if they hold work to do.

    An image's result depends on its batch-mates (the batch is padded to its largest
    image, and the numerics vary with the batch size), so batches must not be cut from
    the images left to do: a resumed run then forms the batches of an uninterrupted
    one and writes identical outputs. Mates already done run again, unwritten.
    """
    to_do = {it.rel for it in todo}
    groups = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    return [g for g in groups if any(it.rel in to_do for it in g)]


def batched(
    decoded: Iterable[tuple[SourceItem, Decoded | FailedItem]],
    group_sizes: Iterable[int],
    on_failure: Callable[[FailedItem], None],
) -> Iterator[list[Decoded]]:
    """One batch per group of `group_sizes` consecutive items, less those that failed."""
    decoded = iter(decoded)
    for size in group_sizes:
        batch: list[Decoded] = []
        for item, result in islice(decoded, size):
            if isinstance(result, FailedItem):
                on_failure(FailedItem(item.path, result.reason))
            else:
                batch.append(result)
        if batch:
            yield batch


class ImageWriter:
    """Writes one image's requested outputs, then records it in the journal.

    The record (with the image's COCO results, which the run-level files are built
    from) is written last: a record means every output of the image is on disk.
    """

    def __init__(
        self, cfg: SegmentConfig, journal: Journal, digest: str, image_ids: dict[str, int]
    ) -> None:
        self.cfg, self.journal, self.digest, self.image_ids = cfg, journal, digest, image_ids
        # Thumbnails are not in the settings hash: one left by an earlier run with
        # `report` would outlive a redo without it.
        self.stale_thumbs = "report" not in cfg.save and (cfg.out / THUMBS_DIR).is_dir()

    def __call__(self, decoded: Decoded, dets: Detections) -> int:
        item, image = decoded.item, decoded.image
        h, w = image.shape[:2]
        out, save = self.cfg.out, self.cfg.save
        drawn = None
        if "report" in save:  # the overlay is drawn once for the thumbnail and its file
            drawn = annotate(image, dets, self.cfg.overlay_style)
            write_thumbnail(out, item.rel, drawn)
        if "overlay" in save:
            path = overlay_path(out, item.rel)
            if drawn is None:
                write_overlay(path, image, dets, self.cfg.overlay_style)
            else:
                write_bytes(path, encode_jpeg(drawn))  # the bytes write_overlay writes
        if "report" not in save and self.stale_thumbs:  # a later report must not show it
            thumb_path(out, item.rel).unlink(missing_ok=True)
        if "masks" in save:
            write_masks(out, item.rel, dets, h, w, self.cfg.mask_format)
        if "yolo" in save:
            write_yolo_labels(out, item.rel, dets, h, w)
        for folder in dataset_image_dirs(self.cfg):
            place_image(
                item.path, dataset_image_path(folder, item.rel), self.cfg.export.copy_images
            )
        if "labelme" in save:
            write_labelme(out, item.rel, item.path, dets, h, w)
        if "crops" in save:
            write_crops(out, item.rel, image, dets)
        image_id = self.image_ids[str(item.rel)]
        self.journal.record(
            item.rel,
            source=item.path,
            image_id=image_id,
            width=w,
            height=h,
            results=dets.to_coco(image_id),
            settings_hash=self.digest,
            stamp=decoded.stamp,
        )
        return len(dets)


def model_version(cfg: SegmentConfig) -> str:
    """What the exports name the model by (Label Studio's `model_version`)."""
    from mrcnn_cli import __version__

    return f"{Path(cfg.model.model).name} (mrcnn {__version__})"


def dataset_image_dirs(cfg: SegmentConfig) -> list[Path]:
    """The folders the dataset exports keep the input images in (links or copies)."""
    dirs = []
    if "yolo" in cfg.save:
        dirs.append(yolo_images_dir(cfg.out))
    if "coco-dataset" in cfg.save:
        dirs.append(coco_dataset_images_dir(cfg.out))
    return dirs


def outputs_exist(cfg: SegmentConfig, rel: PurePosixPath, detections: int) -> bool:
    """Whether an image's per-image files are all still there (resume redoes it if not).

    Folder outputs (binary masks, crops) exist only for images with detections.
    """
    out, save = cfg.out, cfg.save
    files = []
    if "overlay" in save:
        files.append(overlay_path(out, rel))
    if "masks" in save and cfg.mask_format != "binary":
        files.append(output_path(out, "masks", rel, ".png"))
    if "yolo" in save:
        files.append(yolo_label_path(out, rel))
    if "labelme" in save:
        files.append(labelme_path(out, rel))
    if "report" in save:
        files.append(thumb_path(out, rel))
    files.extend(dataset_image_path(folder, rel) for folder in dataset_image_dirs(cfg))
    folders = []
    if detections:
        if "masks" in save and cfg.mask_format == "binary":
            folders.append(output_path(out, "masks", rel, ""))
        if "crops" in save:
            folders.append(crops_folder(out, rel))
    return all(f.is_file() for f in files) and all(d.is_dir() for d in folders)


def is_done(cfg: SegmentConfig, journal: Journal, item: SourceItem, digest: str) -> bool:
    """Recorded under the current settings from the same source file (size and mtime),
    and its output files not deleted since."""
    rel = item.rel
    if not journal.is_done(rel, digest, source_stamp(item.path)):  # the index: cheap
        return False
    detections = 0
    if "crops" in cfg.save or ("masks" in cfg.save and cfg.mask_format == "binary"):
        record = journal.load(rel)  # folder outputs exist only for images with detections
        if record is None:
            return False
        detections = record.num_detections
    return outputs_exist(cfg, rel, detections)


def images_to_do(
    cfg: SegmentConfig,
    journal: Journal,
    items: Sequence[SourceItem],
    failures: Sequence[FailedItem],
    digest: str,
    tally: Tally,
) -> list[SourceItem]:
    """Count the inputs that failed already and the images an earlier run finished;
    return the images left to do (every engine starts its run with this)."""
    for failed in failures:
        tally.fail(failed)
    todo = []
    for it in items:
        if is_done(cfg, journal, it, digest):
            tally.skip()
        else:
            todo.append(it)
    return todo


def write_segment_report(
    cfg: SegmentConfig,
    batch_size: int,
    summary: RunSummary,
    journal: Journal,
    rels: Sequence[PurePosixPath],
    digest: str,
    class_names: tuple[str, ...],
    category_ids: tuple[int, ...],
    shard: ShardSpec | None = None,
    videos: Sequence[Mapping[str, Any]] = (),
) -> list[FailedItem]:
    """report.html (a shard's: report.shard-K-of-N.html) of a segment run, from the journal;
    `videos`: the lines of the videos the run met (`video.job.report_row`)."""
    run = ReportRun("segment", cfg.out, cfg.inputs, cfg.model.model,
                    report_settings(cfg.model, batch_size), cfg.save)  # fmt: skip
    path = cfg.out / shard_file_name(REPORT_FILE, shard)
    return write_run_report(path, run, summary, journal, rels, digest, class_names, category_ids,
                            videos)  # fmt: skip


def run_segment(
    cfg: SegmentConfig,
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
    shard: ShardSpec | None = None,
) -> RunSummary:
    """Run the whole job; per-file problems end up in the summary, not as exceptions.

    `segmenter` reuses a loaded model (else one is built from `cfg.model`); `progress`
    is told about every item (the CLI draws a bar; None runs silent). The output folder
    is locked for the run's duration. `shard` runs only that shard's part of the inputs
    (see shards.py).
    """
    cfg.validate()
    kinds = frozenset({"image", "video"})
    lock = shard_lock_name(shard)
    with prepared_run(cfg.inputs, kinds, cfg.out, cfg.model, cfg.batch_size, segmenter,
                      lock, sweep=shard is None) as run:  # fmt: skip
        return _segment(cfg, run, progress, shard)


def _segment(
    cfg: SegmentConfig,
    run: PreparedRun,
    progress: ProgressListener | None,
    shard: ShardSpec | None,
) -> RunSummary:
    segmenter, batch_size = run.segmenter, run.batch_size
    mine = run.items if shard is None else shard.select(run.items)
    videos = [it for it in mine if it.kind == "video"]  # each counts as one item here
    items = [it for it in mine if it.kind == "image"]
    journal = Journal(cfg.out)
    if cfg.overwrite:  # a shard forgets only its own images: others may share the folder
        journal.clear(None if shard is None else [it.rel for it in mine])
    digest = settings_hash(output_settings(cfg, batch_size))
    known = image_ids_from_annotations(cfg.ann) if cfg.ann else None
    all_images = [it.rel for it in run.items if it.kind == "image"]
    image_ids = assign_image_ids(all_images, known)  # over all inputs: shards agree
    if shard is not None:
        write_manifest(cfg.out, shard, run.items, image_ids, digest, cfg.save,
                       segmenter.class_names, segmenter.category_ids,
                       {**cfg.export.as_dict(), "model_version": model_version(cfg)})  # fmt: skip
    writer = ImageWriter(cfg, journal, digest, image_ids)

    with Tally(len(items) + len(videos) + len(run.failures), listener=progress) as tally:
        todo = images_to_do(cfg, journal, items, run.failures, digest, tally)

        rel_of = {str(it.path): it.rel for it in todo}

        def fail(item: FailedItem) -> None:
            # A file that fails now must not keep results from an earlier run.
            if str(item.path) in rel_of:
                journal.forget(rel_of[str(item.path)])
            tally.fail(item)

        _run(cfg, segmenter, batch_size, items, todo, writer, tally, fail)
        video_rows = []  # for the report
        if videos:  # frames go through the same Segmenter; outputs as `mrcnn video` writes them
            video_cfg = cfg.video_config()
            for video in videos:
                outcome = process_video(video, video_cfg, segmenter, batch_size)
                outcome.count_in(tally)
                video_rows.append(report_row(video, outcome, video_cfg))

        rels = [it.rel for it in items]
        names, ids = segmenter.class_names, segmenter.category_ids
        for failed in write_run_files(cfg.out, cfg.save, journal, rels, digest, image_ids,
                                      names, ids, shard, cfg.export,
                                      model_version(cfg)):  # fmt: skip
            tally.fail(failed)
        if "report" in cfg.save:  # last: it shows the other files' failures too
            for failed in write_segment_report(cfg, batch_size, tally.summary(), journal, rels,
                                               digest, names, ids, shard, video_rows):  # fmt: skip
                tally.fail(failed)
        return close_with_failures(tally, cfg.out, shard_file_name(FAILURES_FILE, shard))


def _run(
    cfg: SegmentConfig,
    segmenter: Segmenter,
    batch_size: int,
    items: Sequence[SourceItem],
    todo: Sequence[SourceItem],
    writer: ImageWriter,
    tally: Tally,
    fail: Callable[[FailedItem], None],
) -> None:
    to_do = {str(it.path) for it in todo}

    def fail_todo(item: FailedItem) -> None:  # a done batch-mate keeps its earlier result
        if str(item.path) in to_do:
            fail(item)

    groups = batch_groups(items, todo, batch_size)
    lookahead = max(2 * batch_size, cfg.workers)
    flat = [it for group in groups for it in group]
    decoded = decode_ahead(flat, cfg.workers, lookahead, cfg.max_pixels)
    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="write") as pool:
        in_flight: deque[tuple[Decoded, Future]] = deque()

        def drain(limit: int) -> None:
            while len(in_flight) > limit:
                done, fut = in_flight.popleft()
                try:
                    tally.advance(detections=fut.result())
                except Exception as exc:  # one image's outputs failed; the run goes on
                    why = os_error_reason(exc) if isinstance(exc, OSError) else str(exc)
                    fail(FailedItem(done.item.path, f"cannot write outputs: {display_name(why)}"))

        for batch in batched(decoded, [len(g) for g in groups], fail_todo):
            predicted = segmenter.predict_batch([d.image for d in batch])
            for done, dets in zip(batch, predicted, strict=True):
                if isinstance(dets, ImageError):
                    fail_todo(FailedItem(done.item.path, dets.reason))
                elif str(done.item.path) in to_do:
                    in_flight.append((done, pool.submit(writer, done, dets)))
            drain(limit=2 * batch_size)
        drain(limit=0)
