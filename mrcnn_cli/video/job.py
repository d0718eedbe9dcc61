"""One `mrcnn video` run: reader -> batched `Segmenter` -> writer thread, per video, resumable.

The reading side is in reader.py, the MP4 side in encoder.py, per-frame outputs in
sink.py, the stride logic in keyframes.py; this module wires them into a job.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import av

from mrcnn_cli.atomic import atomic_path, write_text
from mrcnn_cli.background import BackgroundWriter
from mrcnn_cli.config import VideoConfig
from mrcnn_cli.errors import DecodeError, FailedItem
from mrcnn_cli.journal import Journal, close_with_failures, settings_hash
from mrcnn_cli.progress import ProgressListener, RunSummary, Tally
from mrcnn_cli.runs import model_fingerprint, prepared_run
from mrcnn_cli.segmenter import SegmentationError, Segmenter
from mrcnn_cli.sources import SourceItem
from mrcnn_cli.tracking import TRACKS_CSV_HEADER
from mrcnn_cli.video.encoder import pick_encoder
from mrcnn_cli.video.frames import FOLDER_FPS, frames_stamp, probe_frames, read_folder_frames
from mrcnn_cli.video.keyframes import predict_frames
from mrcnn_cli.video.paths import TRACKS_SUFFIX, VIDEO_SUFFIX, VideoPaths, remove_stale_masks
from mrcnn_cli.video.reader import (
    Decode,
    DecodeReport,
    FrameReader,
    FrameWindow,
    VideoInfo,
    decode_frames,
    probe_video,
)
from mrcnn_cli.video.sink import FrameSink, coco_stream
from mrcnn_cli.writers.report import (
    REPORT_FILE,
    ImageTable,
    ReportRun,
    report_document,
    report_settings,
    url_stem,
    video_row,
    write_report,
)

OnFrames = Callable[[int, int], None]  # (frames done now, detections in them)


@dataclass(frozen=True)
class VideoOutcome:
    """How one video went: frames written, detections, resumed, and its failure if any."""

    frames: int = 0
    detections: int = 0
    skipped: bool = False
    failure: FailedItem | None = None
    tracks: dict[str, int] = field(default_factory=dict)  # per class, with --track

    def count_in(self, tally: Tally) -> None:
        """Count the whole video as one item (how `mrcnn segment` counts it)."""
        tally.add_tracks(self.tracks)
        if self.failure is not None:
            tally.fail(self.failure)
        elif self.skipped:
            tally.skip()
        else:
            tally.advance(detections=self.detections)


class _NoFrames(Exception):
    """Nothing decoded: leave no output at all."""


def video_digest(cfg: VideoConfig, item: SourceItem) -> str:
    """Settings plus the source file's size and mtime (every frame's, and the frame rate,
    for a folder of frames): a changed input is done again."""
    if item.kind == "frames":
        source: dict[str, Any] = {"source": [frames_stamp(item.path), str(item.path)],
                                  "fps": cfg.fps or FOLDER_FPS}  # fmt: skip
    else:
        stat = item.path.stat()
        source = {"source": [stat.st_size, stat.st_mtime_ns, str(item.path)]}
    return settings_hash(
        {**cfg.output_settings(), "model_files": model_fingerprint(cfg.model), **source}
    )


def probe_item(item: SourceItem, cfg: VideoConfig) -> VideoInfo:
    """The header of a video file, or what a folder of frames holds; DecodeError if bad."""
    if item.kind == "frames":
        return probe_frames(item.path, cfg.fps)
    return probe_video(item.path)


def _decoder(item: SourceItem, cfg: VideoConfig) -> Decode:
    if item.kind == "frames":
        return lambda path, window, report: read_folder_frames(path, window, report, cfg.fps)
    return decode_frames


def _outputs_exist(cfg: VideoConfig, paths: VideoPaths) -> bool:
    wanted = []
    if "video" in cfg.save:
        wanted.append(paths.video)
    if "coco" in cfg.save:
        wanted += [paths.predictions, paths.images]
    if "mot" in cfg.save:
        wanted.append(paths.mot)
    if cfg.track is not None:
        wanted.append(paths.tracks)
    return all(p.is_file() for p in wanted)


def process_video(
    item: SourceItem,
    cfg: VideoConfig,
    segmenter: Segmenter,
    batch_size: int,
    on_frames: OnFrames | None = None,
    info: VideoInfo | None = None,
) -> VideoOutcome:
    """Run the model over one video and write its outputs; problems come back as values.

    `on_frames(n, detections)` is called from this thread as frames are predicted.
    """
    try:
        info = info or probe_item(item, cfg)
    except DecodeError as exc:
        return VideoOutcome(failure=FailedItem(item.path, str(exc)))
    paths = VideoPaths.for_item(cfg.out, item.rel)
    if paths.video.exists() and paths.video.resolve() == item.path.resolve():
        reason = "the output would overwrite the input; choose another --out"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    journal = Journal(cfg.out)
    digest = video_digest(cfg, item)
    if not cfg.overwrite and journal.is_done(item.rel, digest) and _outputs_exist(cfg, paths):
        return VideoOutcome(skipped=True)
    journal.forget(item.rel)  # from here on, an earlier run's outputs are not "done"

    report = DecodeReport()
    try:
        frames, detections, tracks = _run_video(
            item, cfg, segmenter, batch_size, info, paths, report, on_frames
        )
    except _NoFrames:
        reason = report.problem or "no frames could be decoded"
        if report.problem is None and (cfg.start > 0 or cfg.end is not None):
            reason = "no frames between --start and --end"
        return VideoOutcome(failure=FailedItem(item.path, reason))
    except DecodeError as exc:
        return VideoOutcome(failure=FailedItem(item.path, str(exc)))
    except SegmentationError as exc:
        return VideoOutcome(failure=FailedItem(item.path, str(exc)))
    except (OSError, ValueError, av.FFmpegError) as exc:
        return VideoOutcome(failure=FailedItem(item.path, f"cannot write outputs: {exc}"))
    if "masks" in cfg.save:
        remove_stale_masks(paths.masks, frames)
    if report.problem is not None:
        return VideoOutcome(
            frames, detections, failure=FailedItem(item.path, report.problem), tracks=tracks
        )
    journal.record(
        item.rel,
        source=item.path,
        image_id=0,
        width=info.width,
        height=info.height,
        results=[],
        settings_hash=digest,
    )
    return VideoOutcome(frames, detections, tracks=tracks)


def _run_video(
    item: SourceItem,
    cfg: VideoConfig,
    segmenter: Segmenter,
    batch_size: int,
    info: VideoInfo,
    paths: VideoPaths,
    report: DecodeReport,
    on_frames: OnFrames | None,
) -> tuple[int, int, dict[str, int]]:
    window = FrameWindow(cfg.start, cfg.end, cfg.max_frames)
    detections = 0
    with ExitStack() as stack:
        video_tmp = stack.enter_context(atomic_path(paths.video)) if "video" in cfg.save else None
        coco = None
        if "coco" in cfg.save:
            coco = stack.enter_context(coco_stream(paths.predictions, paths.images))
        mot = None
        if "mot" in cfg.save:
            mot_tmp = stack.enter_context(atomic_path(paths.mot))
            mot = stack.enter_context(open(mot_tmp, "w", encoding="utf-8"))
        reader = stack.enter_context(
            FrameReader(item.path, window, 2 * batch_size + 2, report, _decoder(item, cfg))
        )
        sink = FrameSink(cfg, item, video_tmp, coco, info, report, mot)
        writer = stack.enter_context(
            BackgroundWriter(sink.write, sink.finish, sink.abort, 2 * batch_size + 8)
        )
        for frame, dets in predict_frames(reader, segmenter, batch_size, cfg.stride):
            writer.put((frame, dets))
            detections += len(dets)
            if on_frames is not None:
                on_frames(1, len(dets))
        if report.frames == 0:
            raise _NoFrames
    tracks: dict[str, int] = {}
    if cfg.track is not None:
        names = segmenter.class_names
        write_text(paths.tracks, tracks_csv(sink.tracks.csv_rows(names)))
        tracks = sink.tracks.per_class(names)
    return report.frames, detections, tracks


def tracks_csv(rows: list[list]) -> str:
    """`<name>.tracks.csv`: a header, then one row per track."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TRACKS_CSV_HEADER)
    writer.writerows(rows)
    return buffer.getvalue()


def run_videos(
    cfg: VideoConfig,
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
) -> RunSummary:
    """`mrcnn video`: every input video in turn; progress and summary count frames."""
    cfg.validate()
    if cfg.codec is not None and "video" in cfg.save:
        pick_encoder(cfg.codec)
    kinds = frozenset({"video", "frames"})  # a folder of images is a clip here
    with prepared_run(cfg.inputs, kinds, cfg.out, cfg.model, cfg.batch_size, segmenter) as run:
        summary = _run_videos(cfg, run.items, run.failures, run.segmenter, run.batch_size, progress)
        # The bar's total was an estimate from the headers; the summary counts what happened.
        summary = replace(summary, total=summary.processed + summary.skipped + len(summary.failed))
    return summary


def _run_videos(
    cfg: VideoConfig,
    items: list[SourceItem],
    failures: list[FailedItem],
    segmenter: Segmenter,
    batch_size: int,
    progress: ProgressListener | None,
) -> RunSummary:
    window = FrameWindow(cfg.start, cfg.end, cfg.max_frames)

    probed: list[tuple[SourceItem, VideoInfo | FailedItem]] = []
    for item in items:
        try:
            probed.append((item, probe_item(item, cfg)))
        except DecodeError as exc:
            probed.append((item, FailedItem(item.path, str(exc))))
    total = len(failures) + sum(
        1 if isinstance(info, FailedItem) else info.expected_frames(window) for _, info in probed
    )

    rows: list[dict[str, Any]] = []  # for the report: one per video
    with Tally(total, unit="frames", description="video", listener=progress) as tally:
        for failed in failures:
            tally.fail(failed)
        for item, info in probed:
            if isinstance(info, FailedItem):
                tally.fail(info)
                rows.append(video_row(item.rel, None, "failed: " + info.display_reason))
                continue
            outcome = process_video(item, cfg, segmenter, batch_size, tally.advance, info)
            if outcome.skipped:
                tally.skip(info.expected_frames(window))
            tally.add_tracks(outcome.tracks)
            if outcome.failure is not None:
                tally.fail(outcome.failure)
            rows.append(report_row(item, outcome, cfg, info.expected_frames(window)))
        if "report" in cfg.save:
            run = ReportRun("video", cfg.out, cfg.inputs, cfg.model.model,
                            report_settings(cfg.model, batch_size), cfg.save)  # fmt: skip
            document = report_document(run, tally.summary(), ImageTable((), ()), rows)
            for failed in write_report(cfg.out / REPORT_FILE, document):
                tally.fail(failed)
        return close_with_failures(tally, cfg.out)


def report_row(
    item: SourceItem, outcome: VideoOutcome, cfg: VideoConfig, expected: int | None = None
) -> dict[str, Any]:
    """The video's line in report.html; `expected`: its frame count when it was skipped."""
    href = url_stem(item.rel) + VIDEO_SUFFIX if "video" in cfg.save else None
    if outcome.skipped:
        return video_row(item.rel, href, "done before", expected)
    status = "done" if outcome.failure is None else "failed: " + outcome.failure.display_reason
    href = href if outcome.frames > 0 else None
    tracks_href = url_stem(item.rel) + TRACKS_SUFFIX if cfg.track is not None else None
    return video_row(item.rel, href, status, outcome.frames, outcome.detections,
                     outcome.tracks if cfg.track is not None else None, tracks_href)  # fmt: skip
