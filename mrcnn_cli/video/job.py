"""One `mrcnn video` run: reader -> batched model -> writer thread, per video, with resume.

The reading side is in reader.py, the MP4 side in encoder.py; this module wires them to
the model (`inference.predict`, the same call as images) and to the other outputs.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, Generic, TypeVar

import av
import numpy as np

from mrcnn_cli.atomic import atomic_path
from mrcnn_cli.detections import Detections
from mrcnn_cli.engine import ModelConfig, SegmentConfig, prepare_output
from mrcnn_cli.errors import DecodeError, FailedItem, MrcnnError
from mrcnn_cli.inference import predict
from mrcnn_cli.journal import Journal, settings_hash, write_failures
from mrcnn_cli.models import LoadedModel
from mrcnn_cli.models.loading import default_batch_size
from mrcnn_cli.postprocess import resolve_class_filter
from mrcnn_cli.progress import ProgressReporter, RunSummary
from mrcnn_cli.sources import SourceItem, collect_sources
from mrcnn_cli.video.encoder import VideoEncoder, pick_encoder
from mrcnn_cli.video.reader import (
    _END,
    DecodeReport,
    Frame,
    FrameReader,
    FrameWindow,
    VideoInfo,
    probe_video,
)
from mrcnn_cli.writers import output_path, safe_rel
from mrcnn_cli.writers.coco import detections_to_results, image_entry
from mrcnn_cli.writers.masks import write_masks
from mrcnn_cli.writers.overlay import OverlayStyle, annotate

SAVE_KINDS = ("video", "masks", "coco")
DEFAULT_CRF = 20
VIDEO_SUFFIX = ".mp4"
PREDICTIONS_SUFFIX = ".predictions.json"
IMAGES_SUFFIX = ".images.json"
_MASK_NAME = re.compile(r"^(\d{6,})\.png$")
T = TypeVar("T")

OnFrames = Callable[[int, int], None]  # (frames done now, detections in them)


# --- settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoConfig:
    """One `mrcnn video` run (and the video part of `mrcnn segment`)."""

    inputs: tuple[str, ...] = ()
    out: Path = Path("results")
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int | None = None  # None: default_batch_size() for the device
    stride: int = 1
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None
    save: tuple[str, ...] = ("video",)
    overwrite: bool = False
    codec: str | None = None
    crf: int = DEFAULT_CRF
    overlay_style: OverlayStyle = field(default_factory=OverlayStyle)

    def validate(self) -> None:
        unknown = set(self.save) - set(SAVE_KINDS)
        if unknown or not self.save:
            raise MrcnnError(f"--save takes a comma-separated subset of {', '.join(SAVE_KINDS)}")
        if (self.batch_size is not None and self.batch_size < 1) or self.stride < 1:
            raise MrcnnError("--batch-size and --stride must be at least 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise MrcnnError("--max-frames must be at least 1")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise MrcnnError("--start must be >= 0 and --end greater than --start")
        if not 0 <= self.crf <= 51:
            raise MrcnnError("--crf must be between 0 and 51")
        if self.codec is not None and "video" in self.save:
            pick_encoder(self.codec)

    def output_settings(self) -> dict[str, Any]:
        """What changes a video's outputs: a rerun with other values redoes the video."""
        model = asdict(self.model)
        model.pop("device")
        return {
            "model": model,
            "stride": self.stride,
            "start": self.start,
            "end": self.end,
            "max_frames": self.max_frames,
            "save": sorted(self.save),
            "codec": self.codec,
            "crf": self.crf,
            "style": asdict(self.overlay_style),
        }

    @classmethod
    def from_segment(cls, cfg: SegmentConfig) -> VideoConfig:
        """Videos met by `mrcnn segment`: its overlays become the MP4, masks and COCO per frame."""
        kinds = {"overlay": "video", "masks": "masks", "coco": "coco"}
        return cls(
            out=cfg.out,
            model=cfg.model,
            batch_size=cfg.batch_size,
            save=tuple(kinds[k] for k in cfg.save),
            overwrite=cfg.overwrite,
            overlay_style=cfg.overlay_style,
        )


@dataclass(frozen=True)
class VideoPaths:
    """Where one video's outputs go (names mirror the input tree like every writer's)."""

    video: Path
    predictions: Path
    images: Path
    masks: Path

    @classmethod
    def for_item(cls, out: Path, rel: PurePosixPath) -> VideoPaths:
        rel = safe_rel(rel)
        return cls(
            video=Path(out, *rel.with_suffix(VIDEO_SUFFIX).parts),
            predictions=Path(out, *rel.with_suffix(PREDICTIONS_SUFFIX).parts),
            images=Path(out, *rel.with_suffix(IMAGES_SUFFIX).parts),
            masks=output_path(out, "masks", rel, ""),
        )


def frame_mask_rel(rel: PurePosixPath, index: int) -> PurePosixPath:
    """`<rel stem>/<index:06d>.png`: `write_masks` puts it under `masks/`."""
    return safe_rel(rel).with_suffix("") / f"{index:06d}.png"


# --- the model side ----------------------------------------------------------------


def predict_frames(
    frames: Iterable[Frame],
    loaded: LoadedModel,
    batch_size: int,
    stride: int,
    mask_threshold: float,
    keep: frozenset[int] | None,
    max_held: int = 32,
) -> Iterator[tuple[Frame, Detections]]:
    """(frame, detections) for every frame, in order; the model sees every `stride`-th.

    Keyed frames are batched `batch_size` at a time; the frames after a keyed frame wait
    for its result (so at most `max_held` frames are held: a batch is cut short when
    more would be) and then share its `Detections` object.
    """
    held: list[Frame] = []
    keyed = 0
    last: Detections | None = None

    def flush() -> Iterator[tuple[Frame, Detections]]:
        nonlocal last, keyed
        keys = [f.image for f in held if f.index % stride == 0]
        results = iter(_predict(loaded, keys, mask_threshold, keep))
        for f in held:
            if f.index % stride == 0:
                last = next(results)
            assert last is not None
            yield f, last
        held.clear()
        keyed = 0

    for frame in frames:
        is_key = frame.index % stride == 0
        if not is_key and not held:
            assert last is not None  # frame 0 is always keyed
            yield frame, last
            continue
        held.append(frame)
        keyed += is_key
        if keyed == batch_size or len(held) >= max_held:
            yield from flush()
    if held:
        yield from flush()


def _predict(
    loaded: LoadedModel,
    images: list[np.ndarray],
    mask_threshold: float,
    keep: frozenset[int] | None,
) -> list[Detections]:
    """One batched forward; out of memory, retry frame by frame before giving up."""
    try:
        return predict(loaded, images, mask_threshold, keep)
    except (MemoryError, RuntimeError) as exc:
        if len(images) == 1 or not _out_of_memory(exc):
            raise
    return [d for image in images for d in predict(loaded, [image], mask_threshold, keep)]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


# --- writing -----------------------------------------------------------------------


class CocoStream:
    """`<stem>.predictions.json` (a COCO results list) and `<stem>.images.json` (one entry
    per frame), written entry by entry so a long video never holds them in memory."""

    def __init__(self, predictions: IO[str], images: IO[str]) -> None:
        self._pred, self._images = predictions, images
        self._first_pred = self._first_image = True
        self._pred.write("[")
        self._images.write("[")

    def add(self, image: dict[str, Any], results: list[dict[str, Any]]) -> None:
        self._images.write(("\n" if self._first_image else ",\n") + json.dumps(image))
        self._first_image = False
        for entry in results:
            self._pred.write(("" if self._first_pred else ",") + json.dumps(entry))
            self._first_pred = False

    def finish(self) -> None:
        self._pred.write("]")
        self._images.write("\n]\n")


@contextmanager
def coco_stream(predictions: Path, images: Path) -> Iterator[CocoStream]:
    with atomic_path(predictions) as p_tmp, atomic_path(images) as i_tmp:
        with open(p_tmp, "w", encoding="utf-8") as pf, open(i_tmp, "w", encoding="utf-8") as imf:
            stream = CocoStream(pf, imf)
            yield stream
            stream.finish()


def frame_image_entry(rel: PurePosixPath, frame: Frame, height: int, width: int) -> dict:
    """A COCO image entry for one frame: id = frame index + 1, plus where it is in the video."""
    entry = image_entry(frame.index + 1, frame_mask_rel(rel, frame.index), width, height)
    entry.update(video=str(rel), frame_index=frame.index, timestamp=round(frame.time, 6))
    return entry


class FrameSink:
    """Everything one frame's outputs need; runs on the writer thread, in frame order."""

    def __init__(
        self,
        cfg: VideoConfig,
        item: SourceItem,
        video_tmp: Path | None,
        coco: CocoStream | None,
        info: VideoInfo,
        report: DecodeReport,
    ) -> None:
        self.cfg, self.item, self.video_tmp, self.coco = cfg, item, video_tmp, coco
        self.info, self.report = info, report
        self.encoder: VideoEncoder | None = None
        self.frames = 0
        # --stride hands the same Detections to several frames: RLE-encode them once.
        self._encoded: tuple[Detections, list[dict[str, Any]]] | None = None

    def write(self, job: tuple[Frame, Detections]) -> None:
        frame, dets = job
        h, w = frame.image.shape[:2]
        if self.video_tmp is not None:
            if self.encoder is None:
                self.encoder = self._open_encoder(w, h, frame.time)
            self.encoder.write(annotate(frame.image, dets, self.cfg.overlay_style), frame.time)
        rel = frame_mask_rel(self.item.rel, frame.index)
        if "masks" in self.cfg.save:
            write_masks(self.cfg.out, rel, dets, h, w, "instance")
        if self.coco is not None:
            if self._encoded is None or self._encoded[0] is not dets:
                self._encoded = (dets, detections_to_results(dets, 0))
            results = [{**r, "image_id": frame.index + 1} for r in self._encoded[1]]
            self.coco.add(frame_image_entry(self.item.rel, frame, h, w), results)
        self.frames += 1

    def _open_encoder(self, width: int, height: int, t0: float) -> VideoEncoder:
        encoder = VideoEncoder(
            self.video_tmp,
            self.item.path,
            width,
            height,
            self.info.fps,
            pick_encoder(self.cfg.codec),
            self.cfg.crf,
            self.report.color,
            with_audio=self.info.audio_codec is not None,
        )
        encoder.start_audio(t0, cut=self.cfg.start > 0)
        return encoder

    def finish(self) -> None:
        if self.encoder is not None:
            try:
                self.encoder.finish()
            finally:
                self.encoder.close()

    def abort(self) -> None:
        if self.encoder is not None:
            self.encoder.close()


class BackgroundWriter(Generic[T]):
    """Calls `handle(item)` on a thread for each `put` item, in order (bounded queue).

    After an error the thread keeps draining so `put` never blocks; the error is raised
    in the producer at its next `put` or on leaving the `with` block.
    """

    def __init__(
        self,
        handle: Callable[[T], None],
        finish: Callable[[], None],
        abort: Callable[[], None],
        maxsize: int,
    ) -> None:
        self._handle, self._finish, self._abort = handle, finish, abort
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="video-write", daemon=True)

    def __enter__(self) -> BackgroundWriter[T]:
        self._thread.start()
        return self

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None and not self._aborted:
                try:
                    self._handle(item)
                except BaseException as exc:
                    self._error = exc
        try:
            if self._error is None and not self._aborted:
                self._finish()
            else:
                self._abort()
        except BaseException as exc:
            self._error = self._error or exc

    def put(self, item: T) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._aborted = exc_type is not None
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error


# --- one video ---------------------------------------------------------------------


@dataclass(frozen=True)
class VideoOutcome:
    """How one video went: frames written, detections, resumed, and its failure if any."""

    frames: int = 0
    detections: int = 0
    skipped: bool = False
    failure: FailedItem | None = None

    def report_as_item(self, progress: ProgressReporter) -> None:
        """Count the whole video as one item (how `mrcnn segment` counts it)."""
        if self.failure is not None:
            progress.fail(self.failure)
        elif self.skipped:
            progress.skip()
        else:
            progress.advance(detections=self.detections)


class _NoFrames(Exception):
    """Nothing decoded: leave no output at all."""


def video_digest(cfg: VideoConfig, source: Path) -> str:
    """Settings plus the source file's size and mtime: a changed input is done again."""
    stat = source.stat()
    return settings_hash(
        {**cfg.output_settings(), "source": [stat.st_size, stat.st_mtime_ns, str(source)]}
    )


def _outputs_exist(cfg: VideoConfig, paths: VideoPaths) -> bool:
    wanted = []
    if "video" in cfg.save:
        wanted.append(paths.video)
    if "coco" in cfg.save:
        wanted += [paths.predictions, paths.images]
    return all(p.is_file() for p in wanted)


def process_video(
    item: SourceItem,
    cfg: VideoConfig,
    loaded: LoadedModel,
    keep: frozenset[int] | None,
    on_frames: OnFrames | None = None,
    info: VideoInfo | None = None,
) -> VideoOutcome:
    """Run the model over one video and write its outputs; problems come back as values.

    `on_frames(n, detections)` is called from this thread as frames are predicted.
    """
    try:
        info = info or probe_video(item.path)
    except DecodeError as exc:
        return VideoOutcome(failure=FailedItem(item.path, str(exc)))
    paths = VideoPaths.for_item(cfg.out, item.rel)
    if paths.video.exists() and paths.video.resolve() == item.path.resolve():
        reason = "the output would overwrite the input; choose another --out"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    journal = Journal(cfg.out)
    digest = video_digest(cfg, item.path)
    if not cfg.overwrite and journal.is_done(item.rel, digest) and _outputs_exist(cfg, paths):
        return VideoOutcome(skipped=True)
    journal.forget(item.rel)  # from here on, an earlier run's outputs are not "done"

    report = DecodeReport()
    try:
        frames, detections = _run_video(item, cfg, loaded, keep, info, paths, report, on_frames)
    except _NoFrames:
        reason = report.problem or "no frames could be decoded"
        if report.problem is None and (cfg.start > 0 or cfg.end is not None):
            reason = "no frames between --start and --end"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    except DecodeError as exc:
        return VideoOutcome(failure=FailedItem(item.path, str(exc)))
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        reason = f"out of memory in the model ({type(exc).__name__})"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    except (OSError, ValueError, av.FFmpegError) as exc:
        return VideoOutcome(failure=FailedItem(item.path, f"cannot write outputs: {exc}"))
    if "masks" in cfg.save:
        _remove_stale_masks(paths.masks, frames)
    if report.problem is not None:
        return VideoOutcome(frames, detections, failure=FailedItem(item.path, report.problem))
    journal.record(
        item.rel,
        source=item.path,
        image_id=0,
        width=info.width,
        height=info.height,
        results=[],
        settings_hash=digest,
    )
    return VideoOutcome(frames, detections)


def _run_video(
    item: SourceItem,
    cfg: VideoConfig,
    loaded: LoadedModel,
    keep: frozenset[int] | None,
    info: VideoInfo,
    paths: VideoPaths,
    report: DecodeReport,
    on_frames: OnFrames | None,
) -> tuple[int, int]:
    window = FrameWindow(cfg.start, cfg.end, cfg.max_frames)
    detections = 0
    with ExitStack() as stack:
        video_tmp = stack.enter_context(atomic_path(paths.video)) if "video" in cfg.save else None
        coco = None
        if "coco" in cfg.save:
            coco = stack.enter_context(coco_stream(paths.predictions, paths.images))
        reader = stack.enter_context(FrameReader(item.path, window, 2 * cfg.batch_size + 2, report))
        sink = FrameSink(cfg, item, video_tmp, coco, info, report)
        writer = stack.enter_context(
            BackgroundWriter(sink.write, sink.finish, sink.abort, 2 * cfg.batch_size + 8)
        )
        for frame, dets in predict_frames(
            reader, loaded, cfg.batch_size, cfg.stride, cfg.model.mask_thr, keep
        ):
            writer.put((frame, dets))
            detections += len(dets)
            if on_frames is not None:
                on_frames(1, len(dets))
        if report.frames == 0:
            raise _NoFrames
    return report.frames, detections


def _remove_stale_masks(folder: Path, frames: int) -> None:
    """Drop frame PNGs an earlier, longer run left beyond this run's last frame."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _MASK_NAME.match(path.name)
        if match and int(match.group(1)) >= frames:
            path.unlink(missing_ok=True)


# --- the command's job -------------------------------------------------------------


def run_videos(
    cfg: VideoConfig,
    enabled_progress: bool = True,
    quiet: bool = False,
    loaded: LoadedModel | None = None,
) -> RunSummary:
    """`mrcnn video`: every input video in turn; progress and summary count frames."""
    cfg.validate()
    items, failures = collect_sources(cfg.inputs, kinds=frozenset({"video"}))
    if not items and not failures:
        raise MrcnnError("no inputs given")
    prepare_output(cfg.out)
    loaded = loaded or cfg.model.load()
    cfg = replace(cfg, batch_size=default_batch_size(loaded.device, cfg.batch_size))
    keep = resolve_class_filter(cfg.model.classes, loaded.class_names, loaded.category_ids)
    window = FrameWindow(cfg.start, cfg.end, cfg.max_frames)

    probed: list[tuple[SourceItem, VideoInfo | FailedItem]] = []
    for item in items:
        try:
            probed.append((item, probe_video(item.path)))
        except DecodeError as exc:
            probed.append((item, FailedItem(item.path, str(exc))))
    total = len(failures) + sum(
        1 if isinstance(info, FailedItem) else info.expected_frames(window) for _, info in probed
    )

    with ProgressReporter(
        total, unit="frames", enabled=enabled_progress, quiet=quiet, description="video"
    ) as progress:
        for failed in failures:
            progress.fail(failed)
        for item, info in probed:
            if isinstance(info, FailedItem):
                progress.fail(info)
                continue
            outcome = process_video(item, cfg, loaded, keep, progress.advance, info)
            if outcome.skipped:
                progress.skip(info.expected_frames(window))
            if outcome.failure is not None:
                progress.fail(outcome.failure)
        summary = progress.summary()
    # The bar's total was an estimate from the headers; the summary counts what happened.
    summary = replace(summary, total=summary.processed + summary.skipped + len(summary.failed))
    write_failures(cfg.out, summary.failed)
    return summary
