"""Whole jobs from Python: the same runs as `mrcnn segment`, `mrcnn video` and `mrcnn eval`.

Options are the commands' long names with underscores: model options (`model`,
`weights`, `device`, `score_thr`, `max_det`, `classes`, `class_thr` ({name: threshold}),
`mask_thr`, ...) and job options (`save`, `mask_format`, `batch_size`, `overwrite`,
`export` (an `ExportOptions` or its fields as a dict), ...). Runs are silent unless a
`progress` listener is given, and return the summary instead of printing it.

    >>> from mrcnn_cli import segment
    >>> summary = segment(["photos/"], "results", model="demo", save=("overlay", "coco"))
    >>> summary.processed, [f.reason for f in summary.failed]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrcnn_cli.config import (
    EvalConfig,
    ExportOptions,
    ModelConfig,
    SegmentConfig,
    VideoConfig,
    as_class_thresholds,
)
from mrcnn_cli.progress import ProgressListener, RunSummary

if TYPE_CHECKING:
    from mrcnn_cli.evaluation.run import EvalOutcome
    from mrcnn_cli.segmenter import Segmenter

PathsLike = str | Path | Sequence[str | Path]


def _split_options(options: dict[str, Any], job: type) -> tuple[ModelConfig, dict[str, Any]]:
    """Model options -> a ModelConfig; the rest must be fields of the job's config."""
    model_names = {f.name for f in fields(ModelConfig)}
    job_names = {f.name for f in fields(job)} - {"model", "inputs", "out", "ann"}
    unknown = set(options) - model_names - job_names
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    model = {k: v for k, v in options.items() if k in model_names}
    if model.get("classes") is not None:
        model["classes"] = tuple(str(c) for c in model["classes"])
    if "class_thr" in model:  # {name: thr} or "name=thr,..."
        model["class_thr"] = as_class_thresholds(model["class_thr"])
    job_options = {k: v for k, v in options.items() if k in job_names}
    if isinstance(job_options.get("export"), dict):
        job_options["export"] = ExportOptions(**job_options["export"])
    for key in ("save", "iou_types"):
        if isinstance(job_options.get(key), str):
            job_options[key] = tuple(p.strip() for p in job_options[key].split(","))
    return ModelConfig(**model), job_options


def _inputs(inputs: PathsLike) -> tuple[str, ...]:
    if isinstance(inputs, (str, Path)):
        return (str(inputs),)
    return tuple(str(i) for i in inputs)


def segment(
    inputs: PathsLike,
    out: str | Path = "results",
    *,
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
    **options: Any,
) -> RunSummary:
    """Segment images (files, folders, globs, lists; videos too) into `out`, resumably.

    >>> segment("photos/", "results", precision="bf16", save="overlay,coco,csv").failed
    """
    from mrcnn_cli.engine import run_segment

    model, job = _split_options(options, SegmentConfig)
    ann = options.get("ann")
    cfg = SegmentConfig(_inputs(inputs), Path(out), model, ann=Path(ann) if ann else None, **job)
    return run_segment(cfg, progress, segmenter)


def segment_video(
    inputs: PathsLike,
    out: str | Path = "results",
    *,
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
    **options: Any,
) -> RunSummary:
    """Segment every frame of videos into annotated MP4s (and masks, COCO) under `out`.

    A folder of image files (and no video) is one clip of them in name order, at
    `fps` frames/s (default 30).

    >>> segment_video("clip.mp4", "results", stride=2, save=("video", "coco")).processed
    >>> segment_video("clip.mp4", "results", track=True, save=("video", "mot")).tracks
    >>> segment_video("frames/", "results", fps=10, track=True).processed
    """
    from mrcnn_cli.config import TrackSettings
    from mrcnn_cli.video.job import run_videos

    if options.get("track") is True:  # track=True: ByteTrack with the default settings
        options["track"] = TrackSettings()
    model, job = _split_options(options, VideoConfig)
    return run_videos(VideoConfig(_inputs(inputs), Path(out), model, **job), progress, segmenter)


def evaluate(
    ann: str | Path,
    *,
    images: str | Path | None = None,
    pred: str | Path | None = None,
    out: str | Path = "eval",
    progress: ProgressListener | None = None,
    segmenter: Segmenter | None = None,
    **options: Any,
) -> EvalOutcome:
    """COCO AP of a results file (`pred`) or of a model run over `images`.

    >>> evaluate("instances.json", pred="results/predictions.json").document["metrics"]
    >>> evaluate("instances.json", images="val2017/", model="demo", out="eval/")
    """
    from mrcnn_cli.evaluation.run import run_eval

    model, job = _split_options(options, EvalConfig)
    job = {k: v for k, v in job.items() if k not in ("pred", "images")}
    cfg = EvalConfig(
        ann=Path(ann),
        out=Path(out),
        pred=Path(pred) if pred else None,
        images=Path(images) if images else None,
        model=None if pred else model,
        **job,
    )
    return run_eval(cfg, progress, segmenter)
