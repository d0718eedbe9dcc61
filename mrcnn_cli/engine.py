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
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn_cli.decode import DEFAULT_MAX_PIXELS, decode_image_safe
from mrcnn_cli.detections import Detections
from mrcnn_cli.errors import FailedItem, MrcnnError
from mrcnn_cli.inference import predict
from mrcnn_cli.journal import Journal, settings_hash, write_failures
from mrcnn_cli.models import LoadedModel, load_model
from mrcnn_cli.models.loading import bundled_or_path, default_batch_size
from mrcnn_cli.postprocess import resolve_class_filter
from mrcnn_cli.progress import ProgressReporter, RunSummary
from mrcnn_cli.sources import SourceItem, collect_sources
from mrcnn_cli.writers.coco import (
    assign_image_ids,
    detections_to_results,
    image_ids_from_annotations,
    write_images_file,
    write_predictions,
)
from mrcnn_cli.writers.masks import MASK_FORMATS, write_masks
from mrcnn_cli.writers.overlay import OverlayStyle, overlay_path, write_overlay

SAVE_KINDS = ("overlay", "masks", "coco")
PREDICTIONS_FILE = "predictions.json"
IMAGES_FILE = "images.json"


@dataclass(frozen=True)
class ModelConfig:
    """Which network, where, and the detection settings: shared by segment, video, eval."""

    model: str = "maskrcnn_resnet50_fpn"
    weights: str | None = None
    device: str = "auto"
    half: bool = False
    score_thr: float = 0.5
    max_det: int = 100
    classes: tuple[str, ...] | None = None
    mask_thr: float = 0.5
    roi_op: str | None = None
    random_init_seed: int | None = None  # tests and benchmarks: seeded random weights

    def load(self) -> LoadedModel:
        if not 0.0 <= self.score_thr <= 1.0 or not 0.0 <= self.mask_thr <= 1.0:
            raise MrcnnError("--score-thr and --mask-thr must be between 0 and 1")
        overrides = {"box_score_thresh": self.score_thr, "box_detections_per_img": self.max_det}
        return load_model(
            self.model,
            self.weights,
            self.device,
            self.half,
            self.roi_op,
            overrides,
            self.random_init_seed,
        )


@dataclass(frozen=True)
class SegmentConfig:
    inputs: tuple[str, ...]
    out: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int | None = None  # None: default_batch_size() for the device
    save: tuple[str, ...] = ("overlay", "coco")
    mask_format: str = "instance"
    ann: Path | None = None
    overwrite: bool = False
    workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS
    overlay_style: OverlayStyle = field(default_factory=OverlayStyle)

    def validate(self) -> None:
        unknown = set(self.save) - set(SAVE_KINDS)
        if unknown or not self.save:
            raise MrcnnError(f"--save takes a comma-separated subset of {', '.join(SAVE_KINDS)}")
        if self.mask_format not in MASK_FORMATS:
            raise MrcnnError(f"--mask-format must be one of {', '.join(MASK_FORMATS)}")
        if (self.batch_size is not None and self.batch_size < 1) or self.workers < 1:
            raise MrcnnError("--batch-size and --workers must be at least 1")

    def output_settings(self) -> dict[str, Any]:
        """What changes an image's outputs: a rerun with other values redoes the image."""
        m = asdict(self.model)
        m.pop("device")
        return {
            "model": m,
            "model_files": [
                file_fingerprint(bundled_or_path(self.model.model)),
                file_fingerprint(self.model.weights),
            ],
            "save": sorted(self.save),
            "mask_format": self.mask_format,
            "style": asdict(self.overlay_style),
        }


def file_fingerprint(path: str | None) -> list[Any] | None:
    """Size and mtime of a checkpoint file, so a retrained model at the same path counts
    as a change of settings (hashing a 100 MB file on every run would cost more)."""
    if not path or not Path(path).is_file():
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


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
        results = detections_to_results(dets, image_id) if "coco" in self.cfg.save else []
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


def prepare_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".mrcnn-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MrcnnError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc


def segment(
    cfg: SegmentConfig,
    enabled_progress: bool = True,
    quiet: bool = False,
    loaded: LoadedModel | None = None,
) -> RunSummary:
    """Run the whole job; per-file problems end up in the summary, not as exceptions."""
    cfg.validate()
    items, failures = collect_sources(cfg.inputs, kinds=frozenset({"image", "video"}))
    if not items and not failures:
        raise MrcnnError("no inputs given")
    videos = [it for it in items if it.kind == "video"]  # each counts as one item here
    items = [it for it in items if it.kind == "image"]
    prepare_output(cfg.out)
    loaded = loaded or cfg.model.load()
    cfg = replace(cfg, batch_size=default_batch_size(loaded.device, cfg.batch_size))
    keep = resolve_class_filter(cfg.model.classes, loaded.class_names, loaded.category_ids)
    journal = Journal(cfg.out)
    if cfg.overwrite:
        journal.clear()
    digest = settings_hash(cfg.output_settings())
    known = image_ids_from_annotations(cfg.ann) if cfg.ann else None
    image_ids = assign_image_ids([it.rel for it in items], known)
    writer = ImageWriter(cfg, journal, digest, image_ids)

    with ProgressReporter(
        len(items) + len(videos) + len(failures), enabled=enabled_progress, quiet=quiet
    ) as progress:
        for failed in failures:
            progress.fail(failed)
        todo = []
        for it in items:
            if journal.is_done(it.rel, digest):
                progress.skip()
            else:
                todo.append(it)

        rel_of = {str(it.path): it.rel for it in todo}

        def fail(item: FailedItem) -> None:
            # A file that fails now must not keep results from an earlier run.
            if str(item.path) in rel_of:
                journal.forget(rel_of[str(item.path)])
            progress.fail(item)

        _run(cfg, loaded, keep, items, todo, writer, progress, fail)
        if videos:  # frames go through the same predict(); outputs as `mrcnn video` writes them
            from mrcnn_cli.video import VideoConfig, process_video

            video_cfg = VideoConfig.from_segment(cfg)
            for video in videos:
                process_video(video, video_cfg, loaded, keep).report_as_item(progress)

        if "coco" in cfg.save:
            results, images = journal.assemble([it.rel for it in items], digest, image_ids)
            write_predictions(cfg.out / PREDICTIONS_FILE, results)
            write_images_file(cfg.out / IMAGES_FILE, images)
        summary = progress.summary()
    write_failures(cfg.out, summary.failed)
    return summary


def _run(
    cfg: SegmentConfig,
    loaded: LoadedModel,
    keep: frozenset[int] | None,
    items: Sequence[SourceItem],
    todo: Sequence[SourceItem],
    writer: ImageWriter,
    progress: ProgressReporter,
    fail: Callable[[FailedItem], None],
) -> None:
    to_do = {str(it.path) for it in todo}

    def fail_todo(item: FailedItem) -> None:  # a done batch-mate keeps its earlier result
        if str(item.path) in to_do:
            fail(item)

    groups = batch_groups(items, todo, cfg.batch_size)
    lookahead = max(2 * cfg.batch_size, cfg.workers)
    flat = [it for group in groups for it in group]
    decoded = decode_ahead(flat, cfg.workers, lookahead, cfg.max_pixels)
    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="write") as pool:
        in_flight: deque[tuple[Decoded, Future]] = deque()

        def drain(limit: int) -> None:
            while len(in_flight) > limit:
                done, fut = in_flight.popleft()
                try:
                    progress.advance(detections=fut.result())
                except (OSError, ValueError) as exc:
                    fail(FailedItem(done.item.path, f"cannot write outputs: {exc}"))

        for batch in batched(decoded, [len(g) for g in groups], fail_todo):
            for done, dets in zip(batch, _predict_batch(loaded, batch, cfg, keep, fail_todo)):
                if dets is not None and str(done.item.path) in to_do:
                    in_flight.append((done, pool.submit(writer, done, dets)))
            drain(limit=2 * cfg.batch_size)
        drain(limit=0)


def _predict_batch(
    loaded: LoadedModel,
    batch: list[Decoded],
    cfg: SegmentConfig,
    keep: frozenset[int] | None,
    fail: Callable[[FailedItem], None],
) -> list[Detections | None]:
    """Predict a batch; if it runs out of memory, retry image by image so one huge
    image fails alone instead of taking its batch-mates with it."""
    images = [d.image for d in batch]
    try:
        return list(predict(loaded, images, cfg.model.mask_thr, keep))
    except (MemoryError, RuntimeError) as exc:
        if "out of memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
    out: list[Detections | None] = []
    for d in batch:
        try:
            out.extend(predict(loaded, [d.image], cfg.model.mask_thr, keep))
        except (MemoryError, RuntimeError) as exc:
            fail(FailedItem(d.item.path, f"out of memory in the model ({type(exc).__name__})"))
            out.append(None)
    return out
