"""The one inference loop behind `segment` (and `eval`'s model mode).

    sources -> decode (thread pool, bounded look-ahead) -> batches -> model
            -> postprocess -> writers (thread pool, bounded) -> journal

Decoding runs ahead of the model in worker threads (OpenCV releases the GIL), and
writing (JPEG/PNG encoding, RLE) runs behind it, so the network is never waiting on
files. Both queues are bounded: memory stays flat however many images there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from mrcnn_cli.config import SegmentConfig
from mrcnn_cli.decode import decode_image_safe
from mrcnn_cli.detections import Detections
from mrcnn_cli.distributed.shards import ShardSpec, shard_file_name, write_manifest
from mrcnn_cli.errors import FailedItem
from mrcnn_cli.evaluation.coco_io import image_ids_from_annotations
from mrcnn_cli.journal import FAILURES_FILE, Journal, settings_hash, write_failures
from mrcnn_cli.progress import ProgressListener, RunSummary, Tally
from mrcnn_cli.runs import model_fingerprint, prepare_run
from mrcnn_cli.segmenter import ImageError, Segmenter
from mrcnn_cli.sources import SourceItem
from mrcnn_cli.video.job import process_video
from mrcnn_cli.writers.coco import assign_image_ids
from mrcnn_cli.writers.masks import write_masks
from mrcnn_cli.writers.overlay import overlay_path, write_overlay

PREDICTIONS_FILE = "predictions.json"
IMAGES_FILE = "images.json"


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


def decode_ahead(
    items: Sequence[SourceItem], workers: int, lookahead: int, max_pixels: int
) -> Iterator[tuple[SourceItem, np.ndarray | FailedItem]]:
    """Decode in a thread pool, yielding in input order, at most `lookahead` in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[SourceItem, Future]] = deque()
        queue = iter(items)
        for item in queue:
            pending.append((item, pool.submit(decode_image_safe, item.path, max_pixels)))
            if len(pending) >= lookahead:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(decode_image_safe, nxt.path, max_pixels)))
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
    decoded: Iterable[tuple[SourceItem, np.ndarray | FailedItem]],
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
                batch.append(Decoded(item, result))
        if batch:
            yield batch


class ImageWriter:
    """Writes one image's requested outputs, then records it in the journal."""

    def __init__(
        self, cfg: SegmentConfig, journal: Journal, digest: str, image_ids: dict[str, int]
    ) -> None:
        self.cfg, self.journal, self.digest, self.image_ids = cfg, journal, digest, image_ids

    def __call__(self, decoded: Decoded, dets: Detections) -> int:
        item, image = decoded.item, decoded.image
        h, w = image.shape[:2]
        out = self.cfg.out
        if "overlay" in self.cfg.save:
            write_overlay(overlay_path(out, item.rel), image, dets, self.cfg.overlay_style)
        if "masks" in self.cfg.save:
            write_masks(out, item.rel, dets, h, w, self.cfg.mask_format)
        image_id = self.image_ids[str(item.rel)]
        results = dets.to_coco(image_id) if "coco" in self.cfg.save else []
        self.journal.record(
            item.rel,
            source=item.path,
            image_id=image_id,
            width=w,
            height=h,
            results=results,
            settings_hash=self.digest,
        )
        return len(dets)


def run_segment(
    cfg: SegmentConfig,
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
    shard: ShardSpec | None = None,
) -> RunSummary:
    """Run the whole job; per-file problems end up in the summary, not as exceptions.

    `segmenter` reuses a loaded model (else one is built from `cfg.model`); `progress`
    is told about every item (the CLI draws a bar; None runs silent). `shard` runs only
    that shard's part of the inputs (see distributed/shards.py).
    """
    cfg.validate()
    run = prepare_run(
        cfg.inputs, frozenset({"image", "video"}), cfg.out, cfg.model, cfg.batch_size, segmenter
    )
    mine = run.items if shard is None else shard.select(run.items)
    videos = [it for it in mine if it.kind == "video"]  # each counts as one item here
    items = [it for it in mine if it.kind == "image"]
    journal = Journal(cfg.out)
    if cfg.overwrite:  # a shard forgets only its own images: others may share the folder
        journal.clear(None if shard is None else [it.rel for it in mine])
    digest = settings_hash(output_settings(cfg, run.batch_size))
    known = image_ids_from_annotations(cfg.ann) if cfg.ann else None
    all_images = [it.rel for it in run.items if it.kind == "image"]
    image_ids = assign_image_ids(all_images, known)  # over all inputs: shards agree
    if shard is not None:
        write_manifest(cfg.out, shard, run.items, image_ids, digest)
    writer = ImageWriter(cfg, journal, digest, image_ids)

    total = len(items) + len(videos) + len(run.failures)
    with Tally(total, listener=progress) as tally:
        for failed in run.failures:
            tally.fail(failed)
        todo = []
        for it in items:
            if journal.is_done(it.rel, digest):
                tally.skip()
            else:
                todo.append(it)

        rel_of = {str(it.path): it.rel for it in todo}

        def fail(item: FailedItem) -> None:
            # A file that fails now must not keep results from an earlier run.
            if str(item.path) in rel_of:
                journal.forget(rel_of[str(item.path)])
            tally.fail(item)

        _run(cfg, run.segmenter, run.batch_size, items, todo, writer, tally, fail)
        if videos:  # frames go through the same Segmenter; outputs as `mrcnn video` writes them
            video_cfg = cfg.video_config()
            for video in videos:
                process_video(video, video_cfg, run.segmenter, run.batch_size).count_in(tally)

        if "coco" in cfg.save:  # streamed from the journal, never all in memory
            rels = [it.rel for it in items]
            predictions = cfg.out / shard_file_name(PREDICTIONS_FILE, shard)
            images_file = cfg.out / shard_file_name(IMAGES_FILE, shard)
            journal.write_coco(predictions, images_file, rels, digest, image_ids)
        summary = tally.summary()
    write_failures(cfg.out, summary.failed, shard_file_name(FAILURES_FILE, shard))
    return summary


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
                except (OSError, ValueError) as exc:
                    fail(FailedItem(done.item.path, f"cannot write outputs: {exc}"))

        for batch in batched(decoded, [len(g) for g in groups], fail_todo):
            predicted = segmenter.predict_batch([d.image for d in batch])
            for done, dets in zip(batch, predicted, strict=True):
                if isinstance(dets, ImageError):
                    fail_todo(FailedItem(done.item.path, dets.reason))
                elif str(done.item.path) in to_do:
                    in_flight.append((done, pool.submit(writer, done, dets)))
            drain(limit=2 * batch_size)
        drain(limit=0)
